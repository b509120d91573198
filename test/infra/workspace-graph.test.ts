/**
 * The workspace dependency graph: every `@ppsd/*` import in a package's source is declared in its
 * package.json, resolves to an exported entry, and the declared graph has no cycle. The API must not
 * reach the inference runtime (onnxruntime-node) through what it imports.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const WORKSPACE_DIRS = ['packages', 'workers', 'apps'];

interface Pkg {
  name: string;
  dir: string;
  deps: string[];
  exports: Record<string, string>;
}

function workspaces(): Pkg[] {
  const out: Pkg[] = [];
  for (const top of WORKSPACE_DIRS) {
    for (const name of readdirSync(join(ROOT, top))) {
      const dir = join(ROOT, top, name);
      let json: { name: string; dependencies?: Record<string, string>; exports?: Record<string, string> };
      try {
        json = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
      } catch {
        continue;
      }
      out.push({
        name: json.name,
        dir,
        deps: Object.keys(json.dependencies ?? {}).filter((d) => d.startsWith('@ppsd/')),
        exports: json.exports ?? {},
      });
    }
  }
  return out;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name === 'dist') continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (/\.tsx?$/.test(name)) out.push(p);
  }
  return out;
}

const IMPORT = /(?:from\s+|import\s*\(\s*)'(@ppsd\/[a-z-]+)(\/[A-Za-z0-9/_-]+)?'/g;

function importsOf(pkg: Pkg): { file: string; target: string; sub: string }[] {
  const out: { file: string; target: string; sub: string }[] = [];
  for (const file of sourceFiles(join(pkg.dir, 'src'))) {
    for (const m of readFileSync(file, 'utf8').matchAll(IMPORT)) {
      out.push({ file: relative(ROOT, file), target: m[1], sub: m[2] ? `.${m[2]}` : '.' });
    }
  }
  return out;
}

const pkgs = workspaces();
const byName = new Map(pkgs.map((p) => [p.name, p]));

describe('workspace dependency graph', () => {
  it('finds the workspaces', () => {
    expect([...byName.keys()].sort()).toEqual(
      expect.arrayContaining([
        '@ppsd/api',
        '@ppsd/contract',
        '@ppsd/engine',
        '@ppsd/model-store',
        '@ppsd/worker',
      ]),
    );
  });

  for (const pkg of pkgs) {
    it(`${pkg.name}: every @ppsd import is declared and exported`, () => {
      const problems: string[] = [];
      for (const imp of importsOf(pkg)) {
        if (imp.target === pkg.name) problems.push(`${imp.file}: imports its own package ${imp.target}`);
        else if (!pkg.deps.includes(imp.target))
          problems.push(`${imp.file}: imports ${imp.target} without declaring it`);
        const target = byName.get(imp.target);
        if (target && !(imp.sub in target.exports))
          problems.push(`${imp.file}: ${imp.target} does not export '${imp.sub}'`);
      }
      expect(problems).toEqual([]);
    });
  }

  it('has no cycle', () => {
    const state = new Map<string, 'visiting' | 'done'>();
    const cycles: string[] = [];
    const visit = (name: string, path: string[]) => {
      if (state.get(name) === 'done') return;
      if (state.get(name) === 'visiting') {
        cycles.push([...path.slice(path.indexOf(name)), name].join(' -> '));
        return;
      }
      state.set(name, 'visiting');
      for (const d of byName.get(name)?.deps ?? []) visit(d, [...path, name]);
      state.set(name, 'done');
    };
    for (const p of pkgs) visit(p.name, []);
    expect(cycles).toEqual([]);
  });

  it('the API never imports the inference runtime', () => {
    // Everything the API imports from the engine comes through its light entries.
    const api = byName.get('@ppsd/api')!;
    const engineEntries = importsOf(api)
      .filter((i) => i.target === '@ppsd/engine')
      .map((i) => i.sub);
    expect(engineEntries.length).toBeGreaterThan(0);
    for (const entry of engineEntries)
      expect(['./tokenizer', './threads', './package', './logprobs']).toContain(entry);
    expect(importsOf(api).some((i) => i.target === '@ppsd/worker')).toBe(false);
  });
});
