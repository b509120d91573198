/**
 * What the API knows about each served model: its context size and how many tokens a prompt occupies
 * (admission counts prompt tokens before anything is enqueued). Production builds it from each model
 * package's manifest + tokenizer; tests build it from a tokenizer directly.
 */
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadTokenizer as engineLoadTokenizer } from '@ppsd/engine/tokenizer';
import type { ApiConfig, ModelSource } from './config';
import type { TokenCountPool } from './tokens/pool';

export interface ModelInfo {
  id: string;
  /** Prompt + completion tokens the model can hold. */
  maxContext: number;
  /**
   * Tokens the prompt occupies in the engine (BOS included), exactly as the worker will count them.
   * Production counts on a worker thread (./tokens/pool), so a long prompt never blocks the event loop.
   */
  countPromptTokens(text: string): Promise<number>;
  /**
   * Characters beyond which a prompt cannot fit the context whatever it says: a cheap bound checked
   * before any tokenization (maxContext x the longest vocabulary piece x NORMALIZER_SLACK).
   */
  maxPromptChars: number;
  /** Seconds since epoch (OpenAI's `created`). */
  created: number;
  /** The dtype the package stores its weights in (f32, f16, bf16, q8, q4), when known. */
  dtype?: string;
  /** Token ids are 0 .. vocabSize - 1 (logit_bias keys are checked against it), when known. */
  vocabSize?: number;
}

export interface ModelRegistry {
  list(): ModelInfo[];
  get(id: string): ModelInfo | undefined;
}

export function staticRegistry(models: ModelInfo[]): ModelRegistry {
  const byId = new Map(models.map((m) => [m.id, m]));
  return { list: () => [...byId.values()], get: (id) => byId.get(id) };
}

/** The engine tokenizer shape the registry needs (`encode` without BOS; the engine prepends BOS). */
export interface PromptTokenizer {
  readonly bosId: number;
  readonly maxPieceChars: number;
  readonly vocabSize?: number;
  encode(text: string): number[];
}

/** Counts a text's tokens (no BOS); by default in this thread, in production on the pool's threads. */
export type CountTokens = (text: string) => Promise<number>;

/**
 * Normalization can shrink text before it is split (NFC composes up to three code points into one), so
 * the character bound allows this factor on top of the longest piece; it stays a bound, not an estimate.
 */
export const NORMALIZER_SLACK = 4;

export type TokenizerLoader = (file: string) => Promise<PromptTokenizer>;

/** What a model package's manifest.json tells the API (see @ppsd/engine's PackageManifest). */
interface ManifestSlice {
  name?: string;
  createdAt?: string;
  config?: { maxSeqLen?: number };
  tokenizer?: { file?: string };
  dtype?: string;
}

/** ModelInfo counting exactly as the engine does: BOS + the tokenizer's ids. */
export function modelInfoFromTokenizer(
  id: string,
  tokenizer: PromptTokenizer,
  maxContext: number,
  createdMs = Date.now(),
  dtype?: string,
  countTokens: CountTokens = async (text) => tokenizer.encode(text).length,
): ModelInfo {
  return {
    id,
    maxContext,
    maxPromptChars: maxContext * tokenizer.maxPieceChars * NORMALIZER_SLACK,
    countPromptTokens: async (text) => 1 + (await countTokens(text)),
    created: Math.floor(createdMs / 1000),
    ...(dtype ? { dtype } : {}),
    ...(tokenizer.vocabSize ? { vocabSize: tokenizer.vocabSize } : {}),
  };
}

/**
 * ModelInfo from a model package folder: manifest.json (context size) + its tokenizer file. The tokenizer
 * is loaded here for its limits; with a pool, counting runs on the pool's threads.
 */
export async function modelInfoFromPackage(
  id: string,
  dir: string,
  loadTokenizer: TokenizerLoader = engineLoadTokenizer,
  pool?: TokenCountPool,
) {
  const manifestFile = join(dir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as ManifestSlice;
  const maxContext = manifest.config?.maxSeqLen;
  if (!maxContext) throw new Error(`model ${id}: ${manifestFile} gives no config.maxSeqLen`);
  if (!manifest.tokenizer?.file) throw new Error(`model ${id}: ${manifestFile} names no tokenizer file`);
  const tokenizerFile = join(dir, manifest.tokenizer.file);
  const tokenizer = await loadTokenizer(tokenizerFile);
  const created =
    (manifest.createdAt && Date.parse(manifest.createdAt)) || (await stat(manifestFile)).mtimeMs;
  // packages written before per-tensor dtypes say 'float32'
  const dtype = manifest.dtype === 'float32' ? 'f32' : manifest.dtype;
  const countTokens = pool ? (text: string) => pool.count(tokenizerFile, text) : undefined;
  return modelInfoFromTokenizer(id, tokenizer, maxContext, created, dtype, countTokens);
}

/**
 * Production registry: every model of PPSD_MODELS from its local package folder (`id=dir`, or
 * `PPSD_MODEL_DIR/<id>`). Only manifest.json and the tokenizer are read. `fetchPackage` (e.g. a pull of
 * manifest + tokenizer from the bucket) supplies a folder when there is no local copy.
 */
export async function loadModelRegistry(
  config: Pick<ApiConfig, 'models' | 'modelDir'>,
  opts: {
    fetchPackage?: (model: ModelSource) => Promise<string>;
    loadTokenizer?: TokenizerLoader;
    pool?: TokenCountPool;
  } = {},
): Promise<ModelRegistry> {
  const loadTokenizer = opts.loadTokenizer ?? engineLoadTokenizer;
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
    out.push(await modelInfoFromPackage(m.id, dir, loadTokenizer, opts.pool));
  }
  return staticRegistry(out);
}
