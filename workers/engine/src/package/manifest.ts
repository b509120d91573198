/**
 * manifest.json of a model package: what the package is, and the size and sha256 of every other file.
 */
import type { TensorDtype } from '../formats/hf-llama';
import type { LlamaConfig } from '../model/llama';
import { MATRIX_DTYPES, type MatrixDtype } from '../model/matrix';

export const MANIFEST_FILE = 'manifest.json';
export const WEIGHTS_FILE = 'weights.safetensors';
export const PACKAGE_FORMAT = 'ppsd-package';
export const PACKAGE_VERSION = 1;

/**
 * A chat template as the model publishes it (`chat_template` of tokenizer_config.json, or GGUF
 * `tokenizer.chat_template`): Jinja source and the `bos_token` / `eos_token` strings it may print.
 */
export interface ChatTemplate {
  template: string;
  bosToken?: string;
  eosToken?: string;
}

export interface FileRecord {
  sha256: string; // lowercase hex
  bytes: number;
}

/** A package file that holds one component (an exit head, a drafter, ...). */
export interface PackageFileRef {
  file: string; // package-relative path, listed in `files`
  kind: string;
  metrics?: Record<string, unknown>;
  [extra: string]: unknown;
}

export interface PackageManifest {
  format: typeof PACKAGE_FORMAT;
  version: typeof PACKAGE_VERSION;
  name: string;
  architecture: 'llama';
  config: LlamaConfig;
  /**
   * The dtype the package was made in (what `--dtype` asked for). Matrices that cannot take it keep a
   * wider one (a blockwise dtype needs inputs in multiples of the block): `tensors` says per matrix.
   * Packages written before per-tensor dtypes say 'float32', read as 'f32'.
   */
  dtype: MatrixDtype;
  /** Every matrix's stored dtype by HF tensor name (norms are always f32). */
  tensors?: Record<string, TensorDtype>;
  /** `addBos`: whether prompts start with BOS (absent in packages written before the field: yes). */
  tokenizer: { file: string; kind: 'llama2c' | 'hf'; addBos?: boolean };
  /** The model's chat template and the special tokens it reads; absent for models without one. */
  chat?: ChatTemplate;
  /** Safetensors file with Hugging Face Llama tensor names. */
  weights: string;
  files: Record<string, FileRecord>;
  createdAt?: string; // ISO 8601
  /** Random weights (`ppsd synth`): real shape and cost, meaningless text. */
  synthetic?: boolean;
  /** Where the weights came from (a path or a description), for people reading the manifest. */
  source?: string;
  /** Early-exit heads keyed by layer (the 1-based count of layers before the exit). */
  exitHeads?: Record<string, PackageFileRef>;
  drafters?: Record<string, PackageFileRef>;
  skipSet?: Record<string, unknown>;
  /** Default layout hint; the loader may ignore it (plans are chosen at load time). */
  stagePlan?: Record<string, unknown>;
  [extra: string]: unknown;
}

export class PackageError extends Error {
  override name = 'PackageError';
  constructor(
    message: string,
    /** Package-relative path of the offending file. */
    readonly file: string,
  ) {
    super(message);
  }
}

/** Rejects paths that could escape the package folder or clash with the manifest. */
export function checkRelativePath(rel: string, dir: string): void {
  const parts = rel.split('/');
  if (
    rel.length === 0 ||
    rel === MANIFEST_FILE ||
    rel.startsWith('/') ||
    rel.includes('\\') ||
    parts.some((p) => p === '' || p === '.' || p === '..')
  ) {
    throw new PackageError(
      `${dir}: invalid package file path '${rel}' (must be relative, '/'-separated, inside the package)`,
      rel,
    );
  }
}

/** Validates the parsed manifest.json enough that the loader can rely on its shape. */
export function parseManifest(json: unknown, dir: string): PackageManifest {
  const fail = (why: string): never => {
    throw new PackageError(`${dir}: invalid manifest.json: ${why}`, MANIFEST_FILE);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail('not a JSON object');
  const m = json as Partial<PackageManifest>;
  if (m.format !== PACKAGE_FORMAT)
    fail(`format is ${JSON.stringify(m.format)}, expected '${PACKAGE_FORMAT}'`);
  if (m.version !== PACKAGE_VERSION)
    fail(`version ${JSON.stringify(m.version)} is not supported (expected ${PACKAGE_VERSION})`);
  if (m.architecture !== 'llama') fail(`architecture ${JSON.stringify(m.architecture)} is not supported`);
  if ((m.dtype as string) === 'float32') m.dtype = 'f32';
  if (!MATRIX_DTYPES.includes(m.dtype as MatrixDtype))
    fail(`dtype ${JSON.stringify(m.dtype)} is not supported (one of ${MATRIX_DTYPES.join(', ')})`);
  for (const [name, t] of Object.entries(m.tensors ?? {})) {
    if (!MATRIX_DTYPES.includes(t?.dtype))
      fail(`tensors['${name}'].dtype ${JSON.stringify(t?.dtype)} is unknown`);
  }
  if (typeof m.name !== 'string') fail('name is missing');
  if (!m.config || typeof m.config !== 'object') fail('config is missing');
  for (const key of [
    'dim',
    'hiddenDim',
    'nLayers',
    'nHeads',
    'nKvHeads',
    'vocabSize',
    'maxSeqLen',
  ] as const) {
    const v = m.config?.[key];
    if (!Number.isInteger(v) || (v as number) <= 0) fail(`config.${key} must be a positive integer`);
  }
  if (!m.tokenizer || typeof m.tokenizer.file !== 'string' || !['llama2c', 'hf'].includes(m.tokenizer.kind)) {
    fail('tokenizer must be {file, kind: "llama2c" | "hf"}');
  }
  if (m.tokenizer && m.tokenizer.addBos !== undefined && typeof m.tokenizer.addBos !== 'boolean')
    fail('tokenizer.addBos must be a boolean');
  if (m.chat !== undefined) {
    const ch = m.chat as Partial<ChatTemplate> | null;
    if (!ch || typeof ch.template !== 'string' || ch.template.length === 0)
      fail('chat.template must be a non-empty string');
    for (const k of ['bosToken', 'eosToken'] as const)
      if (ch?.[k] !== undefined && typeof ch[k] !== 'string') fail(`chat.${k} must be a string`);
  }
  if (typeof m.weights !== 'string') fail('weights is missing');
  if (!m.files || typeof m.files !== 'object' || Array.isArray(m.files))
    fail('files must map paths to {sha256, bytes}');
  for (const [rel, rec] of Object.entries(m.files ?? {})) {
    checkRelativePath(rel, dir);
    if (!rec || !/^[0-9a-f]{64}$/.test(rec.sha256) || !Number.isSafeInteger(rec.bytes) || rec.bytes < 0) {
      fail(`files['${rel}'] must be {sha256: 64 hex digits, bytes: non-negative integer}`);
    }
  }
  for (const rel of referencedFiles(m as PackageManifest)) {
    if (!m.files?.[rel]) fail(`references '${rel}' but lists no size and checksum for it in files`);
  }
  return m as PackageManifest;
}

/** Every file the manifest's fields point at (all of which must be checksummed in `files`). */
export function referencedFiles(m: PackageManifest): string[] {
  const refs = [m.weights, m.tokenizer.file];
  for (const group of [m.exitHeads, m.drafters]) {
    for (const ref of Object.values(group ?? {})) if (typeof ref?.file === 'string') refs.push(ref.file);
  }
  for (const extra of [m.skipSet, m.stagePlan]) if (typeof extra?.file === 'string') refs.push(extra.file);
  return refs;
}
