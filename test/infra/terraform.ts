import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from '@cdktf/hcl2json';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const TF_DIR = join(ROOT, 'terraform');

// biome-ignore lint/suspicious/noExplicitAny: parsed HCL is untyped JSON
export type Block = Record<string, any>;

/** One Terraform module (a directory of .tf files), merged the way Terraform merges its files. */
export interface TfModule {
  dir: string;
  files: string[];
  resource: Record<string, Record<string, Block>>;
  data: Record<string, Record<string, Block>>;
  variable: Record<string, Block>;
  output: Record<string, Block>;
  module: Record<string, Block>;
  locals: Block;
  terraform: Block[];
  provider: Record<string, Block>;
}

export function tfFiles(dir = TF_DIR): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...tfFiles(p));
    else if (name.endsWith('.tf')) out.push(p);
  }
  return out.sort();
}

export async function parseFile(file: string): Promise<Block> {
  return parse(relative(ROOT, file), readFileSync(file, 'utf8'));
}

/** Parses every module directory under terraform/; keys are paths relative to terraform/ ('.' = root). */
export async function loadModules(): Promise<Map<string, TfModule>> {
  const modules = new Map<string, TfModule>();
  for (const file of tfFiles()) {
    const dir = relative(TF_DIR, dirname(file)) || '.';
    let m = modules.get(dir);
    if (!m) {
      m = {
        dir,
        files: [],
        resource: {},
        data: {},
        variable: {},
        output: {},
        module: {},
        locals: {},
        terraform: [],
        provider: {},
      };
      modules.set(dir, m);
    }
    m.files.push(file);
    const parsed = await parseFile(file);
    for (const kind of ['resource', 'data'] as const) {
      for (const [type, byName] of Object.entries(
        (parsed[kind] ?? {}) as Record<string, Record<string, Block[]>>,
      )) {
        m[kind][type] ??= {};
        for (const [name, bodies] of Object.entries(byName)) {
          if (m[kind][type][name]) throw new Error(`${kind} ${type}.${name} declared twice in ${dir}`);
          m[kind][type][name] = bodies[0];
        }
      }
    }
    for (const kind of ['variable', 'output', 'module', 'provider'] as const) {
      for (const [name, bodies] of Object.entries((parsed[kind] ?? {}) as Record<string, Block[]>)) {
        if (m[kind][name]) throw new Error(`${kind} ${name} declared twice in ${dir}`);
        m[kind][name] = bodies[0];
      }
    }
    for (const l of (parsed.locals ?? []) as Block[]) Object.assign(m.locals, l);
    m.terraform.push(...((parsed.terraform ?? []) as Block[]));
  }
  return modules;
}

/** All resources of a type across all modules, as [module dir, name, body]. */
export function resourcesOfType(modules: Map<string, TfModule>, type: string): [string, string, Block][] {
  const out: [string, string, Block][] = [];
  for (const m of modules.values()) {
    for (const [name, body] of Object.entries(m.resource[type] ?? {})) out.push([m.dir, name, body]);
  }
  return out;
}

/** Resolves "${local.x}" against the module's locals (one level, enough for literals). */
export function resolveLocal(m: TfModule, value: unknown): unknown {
  if (typeof value !== 'string') return value;
  const match = /^\$\{local\.([A-Za-z0-9_]+)\}$/.exec(value);
  return match ? m.locals[match[1]] : value;
}

/** A nested block as an array whether HCL gave one or several, static or via `dynamic`. */
export function blocks(body: Block | undefined, name: string): Block[] {
  if (!body) return [];
  const direct = (body[name] ?? []) as Block[];
  const dynamic = ((body.dynamic?.[name] ?? []) as Block[]).flatMap((d) => (d.content ?? []) as Block[]);
  return [...direct, ...dynamic];
}

/** Every string anywhere inside a parsed value. */
export function strings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  if (value && typeof value === 'object') return Object.values(value).flatMap(strings);
  return [];
}
