/**
 * What the API knows about each served model: its context size and how many tokens a prompt occupies
 * (admission counts prompt tokens before anything is enqueued). Production builds it from each model
 * package's manifest + tokenizer; tests build it from a tokenizer directly.
 */
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { type ChatTemplate, type PromptRenderer, promptRenderer } from '@ppsd/contract';
import { packageTokenizerOptions } from '@ppsd/engine/package';
import { loadTokenizer } from '@ppsd/engine/tokenizer';
import type { ApiConfig, ModelSource } from './config';
import type { TokenCountPool } from './tokens/pool';

export interface ModelInfo {
  id: string;
  /** Prompt + completion tokens the model can hold. */
  maxContext: number;
  /**
   * Tokens the prompt occupies in the engine (BOS where the tokenizer adds one), exactly as the worker
   * will count them. Production counts on a worker thread (./tokens/pool): a long prompt never blocks
   * the event loop.
   */
  countPromptTokens(text: string): Promise<number>;
  /**
   * Characters beyond which a prompt cannot fit the context whatever it says: a cheap bound checked
   * before any tokenization (maxContext x the longest vocabulary piece x NORMALIZER_SLACK).
   */
  maxPromptChars: number;
  /** Chat messages and summarization requests -> prompt text (the model's chat template, if it has one). */
  prompts: PromptRenderer;
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

/** The engine tokenizer shape the registry needs (`encodePrompt`: the ids the engine feeds, BOS included). */
export interface PromptTokenizer {
  readonly bosId: number;
  readonly maxPieceChars: number;
  readonly vocabSize?: number;
  encodePrompt(text: string): number[];
}

/** Counts a prompt's tokens as the engine feeds them; in production on the pool's threads. */
export type CountTokens = (text: string) => Promise<number>;

/**
 * Normalization can shrink text before it is split (NFC composes up to three code points into one), so
 * the character bound allows this factor on top of the longest piece; it stays a bound, not an estimate.
 */
export const NORMALIZER_SLACK = 4;

/** What a model package's manifest.json tells the API (see @ppsd/engine's PackageManifest). */
interface ManifestSlice {
  name?: string;
  createdAt?: string;
  config: { maxSeqLen?: number; bosId?: number; eosId?: number };
  tokenizer: { file: string; addBos?: boolean };
  dtype?: string;
  chat?: ChatTemplate;
}

export type TokenizerLoader = (file: string, manifest?: ManifestSlice) => Promise<PromptTokenizer>;

/** The engine's loader with the package's own tokenizer options, as the worker loads it. */
export const engineLoadTokenizer: TokenizerLoader = (file, manifest) =>
  loadTokenizer(file, manifest ? packageTokenizerOptions(manifest as never) : {});

export interface ModelInfoOptions {
  /** The model's chat template (rendering), when it has one. */
  chat?: ChatTemplate;
  /** Default: in this thread with `tokenizer`. */
  countTokens?: CountTokens;
}

/** ModelInfo counting exactly as the engine does (`encodePrompt`), rendering with `chat` when given. */
export function modelInfoFromTokenizer(
  id: string,
  tokenizer: PromptTokenizer,
  maxContext: number,
  createdMs = Date.now(),
  dtype?: string,
  opts: ModelInfoOptions = {},
): ModelInfo {
  const countTokens = opts.countTokens ?? (async (text: string) => tokenizer.encodePrompt(text).length);
  return {
    id,
    maxContext,
    maxPromptChars: maxContext * tokenizer.maxPieceChars * NORMALIZER_SLACK,
    countPromptTokens: countTokens,
    prompts: promptRenderer(opts.chat),
    created: Math.floor(createdMs / 1000),
    ...(dtype ? { dtype } : {}),
    ...(tokenizer.vocabSize ? { vocabSize: tokenizer.vocabSize } : {}),
  };
}

/**
 * ModelInfo from a model package folder: manifest.json (context size, chat template) + its tokenizer
 * file, loaded here for its limits; with a pool, counting runs on the pool's threads with the same options.
 */
export async function modelInfoFromPackage(
  id: string,
  dir: string,
  load: TokenizerLoader = engineLoadTokenizer,
  pool?: TokenCountPool,
) {
  const manifestFile = join(dir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as ManifestSlice;
  const maxContext = manifest.config?.maxSeqLen;
  if (!maxContext) throw new Error(`model ${id}: ${manifestFile} gives no config.maxSeqLen`);
  if (!manifest.tokenizer?.file) throw new Error(`model ${id}: ${manifestFile} names no tokenizer file`);
  const tokenizerFile = join(dir, manifest.tokenizer.file);
  const tokenizer = await load(tokenizerFile, manifest);
  const created =
    (manifest.createdAt && Date.parse(manifest.createdAt)) || (await stat(manifestFile)).mtimeMs;
  // packages written before per-tensor dtypes say 'float32'
  const dtype = manifest.dtype === 'float32' ? 'f32' : manifest.dtype;
  const options = packageTokenizerOptions(manifest as never);
  const countTokens = pool ? (text: string) => pool.count(tokenizerFile, text, options) : undefined;
  try {
    return modelInfoFromTokenizer(id, tokenizer, maxContext, created, dtype, {
      chat: manifest.chat,
      countTokens,
    });
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
