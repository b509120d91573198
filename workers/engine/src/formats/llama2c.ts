/**
 * llama2.c checkpoints (https://github.com/karpathy/llama2.c, export.py):
 *
 * - legacy: 7 int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
 *   negative vocab_size means an untied classifier), then fp32 token_embedding, rms_att, wq, wk, wv, wo,
 *   rms_ffn, w1, w2, w3 (each stacked over layers), rms_final, freq_cis_real/imag [seq_len, hd/2], and
 *   the classifier when untied.
 * - version 1: uint32 magic 'ak42', int32 version 1, the same 7 ints, a uint8 shared_classifier flag,
 *   zero padding to 256 bytes, then fp32 attention norms, ffn norms, final norm, token embedding,
 *   wq, wk, wv, wo, w1, w2, w3 (stacked over layers) and the classifier when not shared.
 *
 * llama2.c rotates interleaved pairs (2i, 2i+1) of each head; the engine uses Hugging Face's rotate_half
 * layout (i, i + hd/2), so wq and wk rows are permuted on import exactly like HF's
 * convert_llama_weights_to_hf.py `permute`. Attention scores, and so the logits, are unchanged.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { endianness } from 'node:os';
import {
  type BiasKey,
  f32Weights,
  headDim,
  type LayerWeights,
  type LlamaConfig,
  type LlamaModel,
} from '../model/llama';
import { dense, f32Matrix, permuteRows } from '../model/matrix';
import { bytesOf, readExactly, readInto } from './file-io';
import type { ProgressFn } from './progress';

const V1_MAGIC = 0x616b3432; // "ak42" read as a little-endian uint32
const V1_HEADER_BYTES = 256;
const LEGACY_HEADER_BYTES = 7 * 4;

export class Llama2cFormatError extends Error {
  override name = 'Llama2cFormatError';
}

interface Layout {
  version: 0 | 1; // 0 = legacy
  config: LlamaConfig;
  headerBytes: number;
  sharedClassifier: boolean;
}

export async function readLlama2c(
  path: string,
  options: { onProgress?: ProgressFn } = {},
): Promise<LlamaModel> {
  if (endianness() !== 'LE')
    throw new Llama2cFormatError('llama2.c checkpoints can only be read on little-endian hosts');
  const fh = await open(path, 'r');
  try {
    const fileBytes = (await fh.stat()).size;
    if (fileBytes < LEGACY_HEADER_BYTES) {
      throw new Llama2cFormatError(
        `${path}: ${fileBytes} bytes is too small for a llama2.c checkpoint (header alone is ${LEGACY_HEADER_BYTES})`,
      );
    }
    const layout = await readLayout(fh, path, fileBytes);
    const expected = expectedFileBytes(layout);
    if (expected !== fileBytes) {
      const what = expected > fileBytes ? 'truncated' : 'oversized';
      throw new Llama2cFormatError(
        `${path}: ${what} llama2.c checkpoint (${layout.version === 1 ? 'version 1' : 'legacy'} format, ` +
          `${describe(layout.config)}): expected ${expected} bytes, file has ${fileBytes}`,
      );
    }
    const reader = new SequentialReader(fh, path, layout.headerBytes, fileBytes, options.onProgress);
    const model =
      layout.version === 1 ? await readV1Body(reader, layout) : await readLegacyBody(reader, layout);
    permuteRopeWeights(model);
    options.onProgress?.(fileBytes, fileBytes);
    return model;
  } finally {
    await fh.close();
  }
}

async function readLayout(fh: FileHandle, path: string, fileBytes: number): Promise<Layout> {
  const first = await readExactly(fh, 0, Math.min(fileBytes, V1_HEADER_BYTES), path);
  if (first.readUInt32LE(0) === V1_MAGIC) {
    const version = first.readInt32LE(4);
    if (version !== 1) {
      throw new Llama2cFormatError(
        `${path}: llama2.c checkpoint version ${version} is not supported (only legacy and version 1 fp32; ` +
          'version 2 is int8-quantized)',
      );
    }
    if (fileBytes < V1_HEADER_BYTES) {
      throw new Llama2cFormatError(
        `${path}: truncated version 1 header: expected at least 256 bytes, file has ${fileBytes}`,
      );
    }
    const ints = Array.from({ length: 7 }, (_, i) => first.readInt32LE(8 + 4 * i));
    const shared = first.readUInt8(36) !== 0;
    return {
      version: 1,
      config: configFromHeader(ints, shared, path),
      headerBytes: V1_HEADER_BYTES,
      sharedClassifier: shared,
    };
  }
  const ints = Array.from({ length: 7 }, (_, i) => first.readInt32LE(4 * i));
  const shared = ints[5] > 0; // legacy export negates vocab_size when the classifier is untied
  ints[5] = Math.abs(ints[5]);
  return {
    version: 0,
    config: configFromHeader(ints, shared, path),
    headerBytes: LEGACY_HEADER_BYTES,
    sharedClassifier: shared,
  };
}

function configFromHeader(ints: number[], shared: boolean, path: string): LlamaConfig {
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, maxSeqLen] = ints;
  const config: LlamaConfig = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize,
    maxSeqLen,
    normEps: 1e-5,
    ropeTheta: 10000,
    tiedEmbeddings: shared,
    bosId: 1,
    eosId: 2,
  };
  const bad = (why: string): never => {
    throw new Llama2cFormatError(`${path}: not a llama2.c checkpoint (header ${describe(config)}: ${why})`);
  };
  if (!ints.every((v) => Number.isInteger(v) && v > 0 && v < 1 << 24))
    bad('every field must be a positive size');
  if (dim % nHeads !== 0) bad('dim must be a multiple of n_heads');
  if (nHeads % nKvHeads !== 0) bad('n_heads must be a multiple of n_kv_heads');
  if ((dim / nHeads) % 2 !== 0) bad('head size must be even for rotary embeddings');
  return config;
}

function describe(c: LlamaConfig): string {
  return (
    `dim=${c.dim} hidden_dim=${c.hiddenDim} n_layers=${c.nLayers} n_heads=${c.nHeads} ` +
    `n_kv_heads=${c.nKvHeads} vocab_size=${c.vocabSize} seq_len=${c.maxSeqLen}`
  );
}

/** Float count of the weights shared by both formats (everything but the RoPE tables and classifier). */
function coreFloats(c: LlamaConfig): number {
  const kvDim = c.nKvHeads * headDim(c);
  const perLayer = 2 * c.dim + 2 * c.dim * c.dim + 2 * kvDim * c.dim + 3 * c.hiddenDim * c.dim;
  return c.vocabSize * c.dim + c.nLayers * perLayer + c.dim;
}

function expectedFileBytes(layout: Layout): number {
  const c = layout.config;
  let floats = coreFloats(c);
  if (layout.version === 0) floats += c.maxSeqLen * headDim(c); // freq_cis_real + freq_cis_imag
  if (!layout.sharedClassifier) floats += c.vocabSize * c.dim;
  return layout.headerBytes + 4 * floats;
}

/** Reads consecutive fp32 arrays, each into its own Float32Array, reporting bytes consumed. */
class SequentialReader {
  constructor(
    private readonly fh: FileHandle,
    private readonly path: string,
    private position: number,
    private readonly fileBytes: number,
    private readonly onProgress?: ProgressFn,
  ) {}

  async floats(count: number): Promise<Float32Array> {
    const out = new Float32Array(count);
    await readInto(this.fh, bytesOf(out), this.position, this.path);
    this.position += out.byteLength;
    this.onProgress?.(this.position, this.fileBytes);
    return out;
  }

  skip(count: number): void {
    this.position += 4 * count;
  }

  /** One [rows*cols] matrix per layer, stored stacked [L, rows, cols]. */
  async perLayer(c: LlamaConfig, size: number): Promise<Float32Array[]> {
    const out: Float32Array[] = [];
    for (let l = 0; l < c.nLayers; l++) out.push(await this.floats(size));
    return out;
  }
}

type Llama2cKey = Exclude<keyof LayerWeights, BiasKey>; // llama2.c has no biases
type Stacked = Record<Llama2cKey, Float32Array[]>;

function sizes(c: LlamaConfig): Record<Llama2cKey, number> {
  const kvDim = c.nKvHeads * headDim(c);
  return {
    attnNorm: c.dim,
    wq: c.dim * c.dim,
    wk: kvDim * c.dim,
    wv: kvDim * c.dim,
    wo: c.dim * c.dim,
    ffnNorm: c.dim,
    w1: c.hiddenDim * c.dim,
    w2: c.dim * c.hiddenDim,
    w3: c.hiddenDim * c.dim,
  };
}

async function readLegacyBody(r: SequentialReader, layout: Layout): Promise<LlamaModel> {
  const c = layout.config;
  const s = sizes(c);
  const tokenEmbedding = await r.floats(c.vocabSize * c.dim);
  const stacked = {} as Stacked;
  for (const key of ['attnNorm', 'wq', 'wk', 'wv', 'wo', 'ffnNorm', 'w1', 'w2', 'w3'] as const) {
    stacked[key] = await r.perLayer(c, s[key]);
  }
  const finalNorm = await r.floats(c.dim);
  r.skip(c.maxSeqLen * headDim(c)); // freq_cis_real and freq_cis_imag: the engine computes its own
  const classifier = layout.sharedClassifier ? tokenEmbedding : await r.floats(c.vocabSize * c.dim);
  return assemble(c, tokenEmbedding, stacked, finalNorm, classifier);
}

async function readV1Body(r: SequentialReader, layout: Layout): Promise<LlamaModel> {
  const c = layout.config;
  const s = sizes(c);
  const stacked = {} as Stacked;
  stacked.attnNorm = await r.perLayer(c, s.attnNorm);
  stacked.ffnNorm = await r.perLayer(c, s.ffnNorm);
  const finalNorm = await r.floats(c.dim);
  const tokenEmbedding = await r.floats(c.vocabSize * c.dim);
  for (const key of ['wq', 'wk', 'wv', 'wo', 'w1', 'w2', 'w3'] as const)
    stacked[key] = await r.perLayer(c, s[key]);
  const classifier = layout.sharedClassifier ? tokenEmbedding : await r.floats(c.vocabSize * c.dim);
  return assemble(c, tokenEmbedding, stacked, finalNorm, classifier);
}

function assemble(
  config: LlamaConfig,
  tokenEmbedding: Float32Array,
  stacked: Stacked,
  finalNorm: Float32Array,
  classifier: Float32Array,
): LlamaModel {
  const layers = Array.from({ length: config.nLayers }, (_, l) => {
    const layer = {} as Record<Llama2cKey, Float32Array>;
    for (const key of Object.keys(stacked) as Llama2cKey[]) layer[key] = stacked[key][l];
    return layer;
  });
  return { config, weights: f32Weights(config, { tokenEmbedding, layers, finalNorm, classifier }) };
}

function permuteRopeWeights(model: LlamaModel): void {
  const c = model.config;
  for (const layer of model.weights.layers) {
    layer.wq = permuteRows(layer.wq, rotateHalfRowOrder(c.nHeads, headDim(c)));
    layer.wk = permuteRows(layer.wk, rotateHalfRowOrder(c.nKvHeads, headDim(c)));
  }
}

/**
 * The row order that turns a q/k projection [nHeads*hd, cols] from interleaved rotary pairs into
 * rotate_half: within each head, row 2i+j moves to j*hd/2 + i (HF's
 * `w.view(n_heads, hd/2, 2, cols).transpose(1, 2)`). order[dst] = src.
 */
export function rotateHalfRowOrder(nHeads: number, hd: number): Int32Array {
  const order = new Int32Array(nHeads * hd);
  const half = hd / 2;
  for (let h = 0; h < nHeads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) order[h * hd + j * half + i] = h * hd + 2 * i + j;
  return order;
}

/** The inverse order (rotate_half -> interleaved), for writers of interleaved formats. */
export function interleavedRowOrder(nHeads: number, hd: number): Int32Array {
  const forward = rotateHalfRowOrder(nHeads, hd);
  const inverse = new Int32Array(forward.length);
  forward.forEach((src, dst) => {
    inverse[src] = dst;
  });
  return inverse;
}

/**
 * Reorders the output rows of a q/k projection [nHeads*hd, cols] so that, within each head, row 2i+j
 * moves to j*hd/2 + i: HF's `w.view(n_heads, hd/2, 2, cols).transpose(1, 2)`.
 */
export function interleavedToRotateHalf(
  w: Float32Array,
  nHeads: number,
  hd: number,
  cols: number,
): Float32Array {
  return dense(permuteRows(f32Matrix(w, nHeads * hd, cols), rotateHalfRowOrder(nHeads, hd)));
}
