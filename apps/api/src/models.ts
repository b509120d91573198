/**
 * What the API knows about each served model: its context size and how many tokens a prompt occupies
 * (admission counts prompt tokens before anything is enqueued). Production builds it from each model
 * package's manifest + tokenizer; tests build it from a tokenizer directly.
 */
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { type ChatTemplate, type PromptRenderer, promptRenderer } from '@ppsd/contract';
import type { ApiConfig, ModelSource } from './config';

export interface ModelInfo {
  id: string;
  /** Prompt + completion tokens the model can hold. */
  maxContext: number;
  /** Tokens the prompt occupies in the engine (BOS included), exactly as the worker will count them. */
  countPromptTokens(text: string): number;
  /** Chat messages and summarization requests -> prompt text (the model's chat template, if it has one). */
  prompts: PromptRenderer;
  /** Seconds since epoch (OpenAI's `created`). */
  created: number;
  /** The dtype the package stores its weights in (f32, f16, bf16, q8, q4), when known. */
  dtype?: string;
}

export interface ModelRegistry {
  list(): ModelInfo[];
  get(id: string): ModelInfo | undefined;
}

export function staticRegistry(models: ModelInfo[]): ModelRegistry {
  const byId = new Map(models.map((m) => [m.id, m]));
  return { list: () => [...byId.values()], get: (id) => byId.get(id) };
}

/** The engine tokenizer shape the registry needs: the engine's own prompt encoding (BOS included). */
export interface PromptTokenizer {
  encodePrompt(text: string): number[];
}

/** What a model package's manifest.json tells the API (see @ppsd/engine's PackageManifest). */
interface ManifestSlice {
  name?: string;
  createdAt?: string;
  config?: { maxSeqLen?: number; bosId?: number; eosId?: number };
  tokenizer?: { file?: string; addBos?: boolean };
  chat?: ChatTemplate;
  dtype?: string;
}

/** Loads a package's tokenizer file exactly as the engine does, given the package's manifest. */
export type TokenizerLoader = (file: string, manifest: ManifestSlice) => Promise<PromptTokenizer>;

/** ModelInfo counting exactly as the engine does (`encodePrompt`), rendering with `chat` when given. */
export function modelInfoFromTokenizer(
  id: string,
  tokenizer: PromptTokenizer,
  maxContext: number,
  createdMs = Date.now(),
  dtype?: string,
  chat?: ChatTemplate,
): ModelInfo {
  return {
    id,
    maxContext,
    countPromptTokens: (text) => tokenizer.encodePrompt(text).length,
    prompts: promptRenderer(chat),
    created: Math.floor(createdMs / 1000),
    ...(dtype ? { dtype } : {}),
  };
}

interface EngineTokenizerExports {
  loadTokenizer?: (file: string, options: unknown) => Promise<PromptTokenizer>;
  packageTokenizerOptions?: (manifest: ManifestSlice) => unknown;
}

/** `loadTokenizer` of `@ppsd/engine`, loaded lazily (the API never needs the inference runtime). */
export async function engineTokenizerLoader(): Promise<TokenizerLoader> {
  const engine = (await import('@ppsd/engine')) as unknown as EngineTokenizerExports;
  const { loadTokenizer, packageTokenizerOptions } = engine;
  if (typeof loadTokenizer !== 'function' || typeof packageTokenizerOptions !== 'function') {
    throw new Error('@ppsd/engine does not export loadTokenizer: cannot count prompt tokens');
  }
  return (file, manifest) => loadTokenizer(file, packageTokenizerOptions(manifest));
}

/** ModelInfo from a model package folder: manifest.json (context size) + its tokenizer file. */
export async function modelInfoFromPackage(id: string, dir: string, loadTokenizer: TokenizerLoader) {
  const manifestFile = join(dir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as ManifestSlice;
  const maxContext = manifest.config?.maxSeqLen;
  if (!maxContext) throw new Error(`model ${id}: ${manifestFile} gives no config.maxSeqLen`);
  if (!manifest.tokenizer?.file) throw new Error(`model ${id}: ${manifestFile} names no tokenizer file`);
  const tokenizer = await loadTokenizer(join(dir, manifest.tokenizer.file), manifest);
  const created =
    (manifest.createdAt && Date.parse(manifest.createdAt)) || (await stat(manifestFile)).mtimeMs;
  // packages written before per-tensor dtypes say 'float32'
  const dtype = manifest.dtype === 'float32' ? 'f32' : manifest.dtype;
  try {
    return modelInfoFromTokenizer(id, tokenizer, maxContext, created, dtype, manifest.chat);
  } catch (err) {
    throw new Error(`model ${id}: ${manifestFile}: chat template does not parse (${(err as Error).message})`);
  }
}

/**
 * Production registry: every model of PPSD_MODELS from its local package folder (`id=dir`, or
 * `PPSD_MODEL_DIR/<id>`). Only manifest.json and the tokenizer are read. `fetchPackage` (e.g. a pull of
 * manifest + tokenizer from the bucket) supplies a folder when there is no local copy.
 */
export async function loadModelRegistry(
  config: Pick<ApiConfig, 'models' | 'modelDir'>,
  opts: { fetchPackage?: (model: ModelSource) => Promise<string>; loadTokenizer?: TokenizerLoader } = {},
): Promise<ModelRegistry> {
  const loadTokenizer = opts.loadTokenizer ?? (await engineTokenizerLoader());
  const out: ModelInfo[] = [];
  for (const m of config.models) {
    let dir = resolve(m.dir ?? join(config.modelDir, m.id));
    if (m.s3 || !existsSync(join(dir, 'manifest.json'))) {
      if (!opts.fetchPackage || !m.s3) {
        throw new Error(
          `model ${m.id}: no package at ${dir} (manifest.json missing); set PPSD_MODELS=${m.id}=/path/to/package, ` +
            `${m.id}=s3://bucket/prefix, or PPSD_MODEL_DIR`,
        );
      }
      dir = await opts.fetchPackage(m);
    }
    out.push(await modelInfoFromPackage(m.id, dir, loadTokenizer));
  }
  return staticRegistry(out);
}
