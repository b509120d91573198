/**
 * llama- and qwen2-architecture GGUF files (llama.cpp's `llama` models: Llama 1/2/3.x, TinyLlama, SmolLM,
 * llama2.c exports, Mistral; its `qwen2` models: Qwen2/2.5) <-> LlamaModel + tokenizer + chat template.
 *
 * Config from `<arch>.*` metadata: explicit head size (`attention.key_length`), linear rope scaling
 * (`rope.scaling.type` / `.factor`), and Llama 3.1-style scaling as llama.cpp's converter stores it: a
 * `rope_freqs.weight` tensor of per-frequency divisors, read back into the llama3 parameters they were
 * computed from (and checked against them). End-of-generation ids: eos, eot and eom token ids.
 * qwen2 adds blk.N.attn_{q,k,v}.bias and keeps Q/K rows in rotate_half order (llama.cpp runs it NEOX-style).
 *
 * Tensors: token_embd.weight, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
 * ffn_down, ffn_up}.weight, output_norm.weight, output.weight (absent = tied to the embedding). GGUF dims
 * are [columns, rows]. llama.cpp stores the Q and K projections with interleaved rotary pairs (its
 * converters permute HF weights); the importer permutes them back to rotate_half like the llama2.c
 * importer does, and the writer permutes them to interleaved again.
 *
 * Tokenizers come from the metadata:
 * - `llama` (SentencePiece): a llama2.c tokenizer.bin when the vocabulary is laid out the way the
 *   engine's exact llama2.c tokenizer assumes (BOS 1, EOS 2, byte pieces <0x00>..<0xFF> at ids 3..258,
 *   no other control or user-defined tokens, the dummy-prefix space); otherwise a Hugging Face
 *   tokenizer.json in the same SentencePiece-BPE style as tokenizer/to-hf.ts.
 * - `gpt2` (byte-level BPE): a tokenizer.json with the vocabulary and `tokenizer.ggml.merges`, a
 *   ByteLevel pre-tokenizer chosen by `tokenizer.ggml.pre` (GPT-2's regex by default, Llama 3's for
 *   llama-bpe, Qwen2's for qwen2) and a ByteLevel decoder. Control tokens become special added tokens,
 *   user-defined tokens plain added tokens (matched whole, printed when decoding), as in the HF files the
 *   GGUFs were converted from.
 */
import { ropeInvFreq } from '../graph/rope';
import {
  BIAS_KEYS,
  type BiasKey,
  endTokenIds,
  headDim,
  type LayerWeights,
  type LlamaConfig,
  type LlamaModel,
  type MatrixKey,
  type RopeScaling,
} from '../model/llama';
import { isBlock, type Matrix, type MatrixDtype, permuteRows } from '../model/matrix';
import type { ChatTemplate } from '../package/manifest';
import { LLAMA2C_BOS, LLAMA2C_EOS, Llama2cTokenizer, readLlama2cTokenizer } from '../tokenizer/llama2c';
import { addedTokens, SPACE_MARK, sentencePieceToHfJson, TOKEN_TYPE, uniqueVocab } from '../tokenizer/to-hf';
import {
  GgufError,
  GgufFile,
  type GgufHeader,
  type GgufTensorInfo,
  type GgufTensorSource,
  type GgufValue,
  gguf,
  metaBool,
  metaNumber,
  metaNumbers,
  metaString,
  metaStrings,
  writeGguf,
} from './gguf';
import {
  blockExportProblem,
  type GgmlWriteType,
  ggmlToMatrix,
  ggmlToVector,
  matrixToGgml,
  vectorToGgml,
  WRITE_TYPE_IDS,
} from './gguf-tensors';
import { EMBED_TOKENS, LM_HEAD, layerTensorName } from './hf-llama';
import { interleavedRowOrder, rotateHalfRowOrder } from './llama2c';
import type { ProgressFn } from './progress';

const LAYER_GGUF: Record<GgufLayerKey, string> = {
  attnNorm: 'attn_norm',
  wq: 'attn_q',
  wk: 'attn_k',
  wv: 'attn_v',
  wo: 'attn_output',
  ffnNorm: 'ffn_norm',
  w1: 'ffn_gate',
  w2: 'ffn_down',
  w3: 'ffn_up',
};
const LAYER_KEYS = Object.keys(LAYER_GGUF) as GgufLayerKey[];
type GgufLayerKey = Exclude<keyof LayerWeights, BiasKey>;
const NORM_KEYS = new Set<keyof LayerWeights>(['attnNorm', 'ffnNorm']);
export const TOKEN_EMBD = 'token_embd.weight';
export const OUTPUT_NORM = 'output_norm.weight';
export const OUTPUT = 'output.weight';
export const ggufLayerTensorName = (layer: number, key: GgufLayerKey): string =>
  `blk.${layer}.${LAYER_GGUF[key]}.weight`;
const BIAS_GGUF: Record<BiasKey, string> = { bq: 'attn_q', bk: 'attn_k', bv: 'attn_v' };
export const ggufBiasTensorName = (layer: number, key: BiasKey): string =>
  `blk.${layer}.${BIAS_GGUF[key]}.bias`;
export const ROPE_FREQS = 'rope_freqs.weight';
/** The GGUF architectures this module reads and writes. */
export type GgufArch = 'llama' | 'qwen2';
const ARCHES: readonly string[] = ['llama', 'qwen2'];

/** llama.cpp's token types (tokenizer.ggml.token_type). */
export { TOKEN_TYPE };

/** llama.cpp's LLAMA_FTYPE values for general.file_type. */
const FILE_TYPE_IDS = { f32: 0, f16: 1, q4_0: 2, q8_0: 7, bf16: 32 } as const;
export type GgufFileType = keyof typeof FILE_TYPE_IDS;

export type GgufTokenizer = { kind: 'llama2c'; bytes: Buffer } | { kind: 'hf'; json: string };

export interface GgufLlamaSummary {
  name?: string;
  architecture: GgufArch;
  version: number;
  alignment: number;
  fileType?: number;
  quantizationVersion?: number;
  /** How many tensors of each ggml type the file holds. */
  tensorTypes: Record<string, number>;
  tokenizerModel: string;
  tokenizerPre?: string;
  fileBytes: number;
}

export interface GgufLlamaImport {
  model: LlamaModel;
  tokenizer: GgufTokenizer;
  /** HF name of every matrix -> its dtype after import (norms are always f32 and not listed). */
  tensorDtypes: Record<string, MatrixDtype>;
  metadata: GgufLlamaSummary;
  /** `tokenizer.chat_template`, with the BOS/EOS token strings it prints. */
  chat?: ChatTemplate;
  /** Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`; absent: SentencePiece yes, BPE no). */
  addBos: boolean;
}

export interface ReadGgufLlamaOptions {
  onProgress?: ProgressFn;
  /** 'hf' converts a SentencePiece vocabulary to tokenizer.json even when tokenizer.bin would do. */
  tokenizerFormat?: 'auto' | 'hf';
}

// ---- reading ------------------------------------------------------------------------------------------

export async function readGgufLlama(
  path: string,
  options: ReadGgufLlamaOptions = {},
): Promise<GgufLlamaImport> {
  const file = await GgufFile.open(path);
  try {
    const h = file.header;
    const fail = (why: string): never => {
      throw new GgufError(`${path}: ${why}`);
    };
    const arch = metaString(h, 'general.architecture');
    if (arch === undefined) fail('has no general.architecture (not a model file?)');
    if (!ARCHES.includes(arch as string))
      fail(`general.architecture '${arch}' is not supported (runs ${ARCHES.join(', ')})`);
    const a = arch as GgufArch;

    const vocab = readVocab(h);
    const tokenizer = tokenizerFromVocab(vocab, h.path, options.tokenizerFormat ?? 'auto');
    const freqsInfo = file.find(ROPE_FREQS);
    const freqs = freqsInfo
      ? ggmlToVector(
          `${path}: tensor '${ROPE_FREQS}'`,
          freqsInfo.type,
          freqsInfo.dims,
          await file.readTensor(freqsInfo),
        )
      : undefined;
    const config = configFromGguf(h, vocab, a, fitsLlama2c(vocab), freqs);

    const expected = expectedShapes(config);
    if (freqs) expected.set(ROPE_FREQS, [freqs.length]);
    const unexpected = h.tensors.filter((t) => !expected.has(t.name));
    if (unexpected.length > 0) {
      const names = unexpected.slice(0, 5).map((t) => `'${t.name}'`);
      fail(
        `has tensors a plain Llama model does not have: ${names.join(', ')}` +
          `${unexpected.length > 5 ? ` and ${unexpected.length - 5} more` : ''} (refusing to ignore them)`,
      );
    }
    expected.delete(ROPE_FREQS); // read above, into the config
    const infos = new Map<string, GgufTensorInfo>();
    for (const [name, shape] of expected) {
      const t = file.find(name);
      if (!t) fail(`missing tensor '${name}'`);
      const info = t as GgufTensorInfo;
      if (!sameDims(info.dims, shape)) {
        fail(
          `tensor '${name}' has dims [${info.dims}], expected [${shape}] for this config ` +
            `(GGUF dims are [columns, rows]; ${describe(config)})`,
        );
      }
      infos.set(name, info);
    }

    const total = [...infos.values()].reduce((s, t) => s + t.byteLength, 0);
    let done = 0;
    const tensorDtypes: Record<string, MatrixDtype> = {};
    const read = async (name: string) => {
      const info = infos.get(name)!;
      const bytes = await file.readTensor(info);
      done += info.byteLength;
      options.onProgress?.(done, total);
      return { info, bytes, what: `${path}: tensor '${name}'` };
    };
    const matrix = async (name: string, hfName: string, order?: Int32Array): Promise<Matrix> => {
      const { info, bytes, what } = await read(name);
      let m = ggmlToMatrix(what, info.type, info.dims, bytes);
      if (order) m = permuteRows(m, order);
      tensorDtypes[hfName] = m.dtype;
      return m;
    };
    const vector = async (name: string): Promise<Float32Array> => {
      const { info, bytes, what } = await read(name);
      return ggmlToVector(what, info.type, info.dims, bytes);
    };

    const hd = headDim(config);
    // llama: Q/K rows interleaved by the converter, permuted back; qwen2 keeps rotate_half rows
    const qOrder = a === 'llama' ? rotateHalfRowOrder(config.nHeads, hd) : undefined;
    const kOrder = a === 'llama' ? rotateHalfRowOrder(config.nKvHeads, hd) : undefined;
    const tokenEmbedding = await matrix(TOKEN_EMBD, EMBED_TOKENS);
    const layers: LayerWeights[] = [];
    for (let l = 0; l < config.nLayers; l++) {
      const g = (key: GgufLayerKey) => ggufLayerTensorName(l, key);
      const m = (key: MatrixKey, order?: Int32Array) => matrix(g(key), layerTensorName(l, key), order);
      layers.push({
        attnNorm: await vector(g('attnNorm')),
        wq: await m('wq', qOrder),
        wk: await m('wk', kOrder),
        wv: await m('wv'),
        wo: await m('wo'),
        ffnNorm: await vector(g('ffnNorm')),
        w1: await m('w1'),
        w2: await m('w2'),
        w3: await m('w3'),
      });
      if (config.qkvBias)
        for (const key of BIAS_KEYS) layers[l][key] = await vector(ggufBiasTensorName(l, key));
    }
    const finalNorm = await vector(OUTPUT_NORM);
    const classifier = config.tiedEmbeddings ? tokenEmbedding : await matrix(OUTPUT, LM_HEAD);
    options.onProgress?.(total, total);

    const tensorTypes: Record<string, number> = {};
    for (const t of h.tensors) tensorTypes[t.typeName] = (tensorTypes[t.typeName] ?? 0) + 1;
    return {
      model: { config, weights: { tokenEmbedding, layers, finalNorm, classifier } },
      tokenizer,
      tensorDtypes,
      metadata: {
        name: metaString(h, 'general.name'),
        architecture: a,
        version: h.version,
        alignment: h.alignment,
        fileType: metaNumber(h, 'general.file_type'),
        quantizationVersion: metaNumber(h, 'general.quantization_version'),
        tensorTypes,
        tokenizerModel: vocab.model,
        tokenizerPre: vocab.pre,
        fileBytes: h.fileBytes,
      },
      ...chatOf(h, vocab),
      addBos: vocab.addBos ?? vocab.model === 'llama',
    };
  } finally {
    await file.close();
  }
}

/** Equal as ggml sees them: trailing dims of 1 do not count ([64] is [64, 1, 1, 1]). */
function sameDims(a: readonly number[], b: readonly number[]): boolean {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if ((a[i] ?? 1) !== (b[i] ?? 1)) return false;
  return true;
}

function describe(c: LlamaConfig): string {
  return (
    `dim=${c.dim} hidden=${c.hiddenDim} layers=${c.nLayers} heads=${c.nHeads} kv_heads=${c.nKvHeads} ` +
    `vocab=${c.vocabSize}`
  );
}

/** GGUF name -> expected dims ([columns, rows] for matrices). */
function expectedShapes(c: LlamaConfig): Map<string, number[]> {
  const hd = headDim(c);
  const per: Record<GgufLayerKey, number[]> = {
    attnNorm: [c.dim],
    wq: [c.dim, c.nHeads * hd],
    wk: [c.dim, c.nKvHeads * hd],
    wv: [c.dim, c.nKvHeads * hd],
    wo: [c.nHeads * hd, c.dim],
    ffnNorm: [c.dim],
    w1: [c.dim, c.hiddenDim],
    w2: [c.hiddenDim, c.dim],
    w3: [c.dim, c.hiddenDim],
  };
  const out = new Map<string, number[]>([[TOKEN_EMBD, [c.dim, c.vocabSize]]]);
  for (let l = 0; l < c.nLayers; l++) {
    for (const key of LAYER_KEYS) out.set(ggufLayerTensorName(l, key), per[key]);
    if (c.qkvBias) {
      out.set(ggufBiasTensorName(l, 'bq'), [c.nHeads * hd]);
      out.set(ggufBiasTensorName(l, 'bk'), [c.nKvHeads * hd]);
      out.set(ggufBiasTensorName(l, 'bv'), [c.nKvHeads * hd]);
    }
  }
  out.set(OUTPUT_NORM, [c.dim]);
  if (!c.tiedEmbeddings) out.set(OUTPUT, [c.dim, c.vocabSize]);
  return out;
}

/** The shortest decimal that is the same f32 (1e-5 rather than 9.999999747378752e-6). */
function shortestF32(v: number): number {
  for (let p = 1; p <= 9; p++) {
    const c = Number(v.toPrecision(p));
    if (Math.fround(c) === v) return c;
  }
  return v;
}

/** tokenizer.chat_template with the special-token strings it prints. */
function chatOf(h: GgufHeader, v: Vocab): { chat?: ChatTemplate } {
  const template = metaString(h, 'tokenizer.chat_template');
  if (!template) return {};
  return { chat: { template, bosToken: v.tokens[v.bosId], eosToken: v.tokens[v.eosId] } };
}

function configFromGguf(
  h: GgufHeader,
  vocab: Vocab,
  arch: GgufArch,
  llama2cVocab: boolean,
  freqs: Float32Array | undefined,
): LlamaConfig {
  const fail = (why: string): never => {
    throw new GgufError(`${h.path}: unsupported ${arch} model: ${why}`);
  };
  const key = (k: string) => `${arch}.${k}`;
  const int = (k: string, fallback?: number): number => {
    const v = metaNumber(h, key(k)) ?? fallback;
    if (v === undefined) return fail(`missing metadata '${key(k)}'`);
    if (!Number.isInteger(v) || v <= 0 || v >= 2 ** 31)
      return fail(`'${key(k)}' = ${v} is not a positive size`);
    return v;
  };
  const dim = int('embedding_length');
  const nHeads = int('attention.head_count');
  const nKvHeads = int('attention.head_count_kv', nHeads);
  const normEps = metaNumber(h, key('attention.layer_norm_rms_epsilon'));
  if (normEps === undefined) fail(`missing metadata '${key('attention.layer_norm_rms_epsilon')}'`);
  if (nHeads % nKvHeads !== 0) fail(`head_count ${nHeads} is not a multiple of head_count_kv ${nKvHeads}`);
  // the head size: attention.key_length when given (Llama 3.2, Mistral-Nemo), else embedding / heads
  const keyLength = metaNumber(h, key('attention.key_length'));
  if (keyLength === undefined && dim % nHeads !== 0)
    fail(`embedding_length ${dim} is not a multiple of head_count ${nHeads}`);
  const hd = keyLength ?? dim / nHeads;
  if (!Number.isInteger(hd) || hd % 2 !== 0) fail(`head size ${hd} is not an even integer`);
  for (const k of ['rope.dimension_count', 'attention.value_length']) {
    const v = metaNumber(h, key(k));
    if (v !== undefined && v !== hd) fail(`'${key(k)}' = ${v} differs from the head size ${hd}`);
  }
  const experts = metaNumber(h, key('expert_count')) ?? 0;
  if (experts > 0) fail(`mixture of experts (${key('expert_count')} = ${experts})`);
  const maxSeqLen = int('context_length');
  const ropeTheta = shortestF32(metaNumber(h, key('rope.freq_base')) ?? 10000);
  const ropeScaling = ropeScalingFromGguf(h, key, { dim, nHeads, headDim: hd, ropeTheta }, freqs, fail);

  // llama.cpp stops at any end-of-generation token: eos, eot (Llama 3's <|eot_id|>), eom
  const ends = ['eos', 'eot', 'eom']
    .map((k) => metaNumber(h, `tokenizer.ggml.${k}_token_id`))
    .filter((id): id is number => id !== undefined);
  const eosIds = [...new Set([vocab.eosId, ...ends])];
  // llama.cpp sizes the vocabulary by the tokens array (llama.vocab_size only matters without one)
  const vocabSize = vocab.tokens.length;
  return {
    dim,
    hiddenDim: int('feed_forward_length'),
    nLayers: int('block_count'),
    nHeads,
    nKvHeads,
    vocabSize,
    maxSeqLen,
    normEps: shortestF32(normEps as number),
    ropeTheta,
    tiedEmbeddings: !h.tensors.some((t) => t.name === OUTPUT),
    bosId: vocab.bosId,
    eosId: vocab.eosId,
    // a llama2.c vocabulary keeps llama2.c's ending (EOS or BOS: run.c ends a story at BOS)
    ...(llama2cVocab ? {} : { eosIds }),
    ...(keyLength !== undefined && keyLength !== dim / nHeads ? { headDim: keyLength } : {}),
    ...(ropeScaling ? { ropeScaling } : {}),
    ...(arch === 'qwen2' ? { qkvBias: true, family: 'qwen2' as const } : {}),
  };
}

/**
 * llama.cpp's rope_freqs factors for Llama 3.1 scaling, as convert_hf_to_gguf.py computes them from the
 * HF parameters: 1 for short wavelengths, `factor` for long ones, 1 / ((1 - smooth) / factor + smooth)
 * between (the rotation angle is divided by the factor).
 */
export function llama3FreqFactors(c: Parameters<typeof ropeInvFreq>[0]): Float32Array {
  const s = c.ropeScaling;
  if (s?.type !== 'llama3') throw new Error('llama3FreqFactors needs llama3 rope scaling');
  const plain = ropeInvFreq({ ...c, ropeScaling: undefined });
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  return Float32Array.from(plain, (inv) => {
    const wavelen = (2 * Math.PI) / inv;
    if (wavelen < highWavelen) return 1;
    if (wavelen > lowWavelen) return s.factor;
    const smooth =
      (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    return 1 / ((1 - smooth) / s.factor + smooth);
  });
}

/**
 * The llama3 parameters behind a rope_freqs tensor: factor = the largest divisor; in the band between,
 * 1/f = (1 - s)/factor + s with s = (old/wavelen - low)/(high - low), linear in 1/wavelen, so two band
 * points give old/(high - low) and low/(high - low); with low_freq_factor 1 (every published Llama 3.x)
 * that fixes high and the original context. The factors recomputed from the result must match the file.
 */
function llama3FromFreqFactors(
  freqs: Float32Array,
  c: Parameters<typeof ropeInvFreq>[0],
  fail: (why: string) => never,
): RopeScaling {
  const plain = ropeInvFreq({ ...c, ropeScaling: undefined });
  if (freqs.length !== plain.length)
    fail(`'${ROPE_FREQS}' has ${freqs.length} entries for ${plain.length} frequencies`);
  const factor = Math.max(...freqs);
  const band = [...freqs.keys()].filter((i) => freqs[i] > 1 + 1e-6 && freqs[i] < factor * (1 - 1e-6));
  if (!(factor > 1) || band.length < 2)
    fail(
      `'${ROPE_FREQS}' has ${band.length} interpolated frequencies; cannot recover Llama 3 scaling from it`,
    );
  // s_i = A / wavelen_i - B, least squares over the band
  const pts = band.map((i) => ({
    x: plain[i] / (2 * Math.PI),
    y: (1 / freqs[i] - 1 / factor) / (1 - 1 / factor),
  }));
  const mx = pts.reduce((t, p) => t + p.x, 0) / pts.length;
  const my = pts.reduce((t, p) => t + p.y, 0) / pts.length;
  const A =
    pts.reduce((t, p) => t + (p.x - mx) * (p.y - my), 0) / pts.reduce((t, p) => t + (p.x - mx) ** 2, 0);
  const B = A * mx - my;
  const round = (v: number) => Number(v.toPrecision(6));
  const scaling: RopeScaling = {
    type: 'llama3',
    factor: round(factor),
    lowFreqFactor: 1,
    highFreqFactor: round(1 + 1 / B),
    originalMaxPositionEmbeddings: Math.round(A / B),
  };
  const again = llama3FreqFactors({ ...c, ropeScaling: scaling });
  again.forEach((f, i) => {
    if (Math.abs(f - freqs[i]) > 1e-4 * freqs[i])
      fail(
        `'${ROPE_FREQS}'[${i}] = ${freqs[i]} is not Llama 3 scaling (best fit ${JSON.stringify(scaling)} gives ${f})`,
      );
  });
  return scaling;
}

function ropeScalingFromGguf(
  h: GgufHeader,
  key: (k: string) => string,
  c: Parameters<typeof ropeInvFreq>[0],
  freqs: Float32Array | undefined,
  fail: (why: string) => never,
): RopeScaling | undefined {
  const type = metaString(h, key('rope.scaling.type'));
  // llama.cpp reads a factor of 0 as "no scaling"
  const rawFactor = metaNumber(h, key('rope.scaling.factor')) ?? metaNumber(h, key('rope.scale_linear')) ?? 1;
  const factor = rawFactor === 0 ? 1 : rawFactor;
  if (freqs) {
    if (type !== undefined && type !== 'none' && !(type === 'linear' && factor === 1))
      fail(`'${ROPE_FREQS}' together with rope scaling type '${type}'`);
    return llama3FromFreqFactors(freqs, c, fail);
  }
  if (type === undefined || type === 'none' || type === 'linear') {
    return factor === 1 ? undefined : { type: 'linear', factor: shortestF32(factor) };
  }
  return fail(`${key('rope.scaling.type')} '${type}' (runs none, linear, and llama3 through ${ROPE_FREQS})`);
}

// ---- tokenizers ---------------------------------------------------------------------------------------

/** The tokenizer.ggml.* metadata. */
export interface GgufVocab {
  model: 'llama' | 'gpt2';
  tokens: string[];
  scores?: ArrayLike<number>;
  tokenTypes?: ArrayLike<number>;
  /** gpt2: "left right" per merge, highest priority first. */
  merges?: string[];
  /** gpt2: the pre-tokenizer name (tokenizer.ggml.pre). */
  pre?: string;
  bosId: number;
  eosId: number;
  unknownId?: number;
  addBos?: boolean;
  addEos?: boolean;
  addSpacePrefix?: boolean;
}

interface Vocab extends GgufVocab {
  types: (id: number) => number;
}

function readVocab(h: GgufHeader): Vocab {
  const fail = (why: string): never => {
    throw new GgufError(`${h.path}: ${why}`);
  };
  const model = metaString(h, 'tokenizer.ggml.model');
  if (model === undefined) fail('has no tokenizer.ggml.model (the tokenizer must come with the model)');
  if (model !== 'llama' && model !== 'gpt2')
    fail(
      `tokenizer model '${model}' is not supported (only 'llama' SentencePiece and 'gpt2' byte-level BPE)`,
    );
  const tokens = metaStrings(h, 'tokenizer.ggml.tokens');
  if (!tokens || tokens.length === 0) fail('has no tokenizer.ggml.tokens');
  const n = (tokens as string[]).length;
  const scores = metaNumbers(h, 'tokenizer.ggml.scores');
  const tokenTypes = metaNumbers(h, 'tokenizer.ggml.token_type');
  if (scores && scores.length !== n)
    fail(`tokenizer.ggml.scores has ${scores.length} entries for ${n} tokens`);
  if (tokenTypes && tokenTypes.length !== n)
    fail(`tokenizer.ggml.token_type has ${tokenTypes.length} entries for ${n} tokens`);
  const id = (key: string, fallback: number | undefined): number | undefined => {
    const v = metaNumber(h, `tokenizer.ggml.${key}`) ?? fallback;
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v >= n))
      fail(`tokenizer.ggml.${key} ${v} is not a token id`);
    return v;
  };
  const isSpm = model === 'llama';
  // llama.cpp's defaults: SentencePiece BOS 1, EOS 2, UNK 0; BPE BOS = EOS = 11.
  const eosId = id('eos_token_id', isSpm ? 2 : undefined);
  if (eosId === undefined) fail('has no tokenizer.ggml.eos_token_id');
  const bosId = id('bos_token_id', isSpm ? 1 : eosId) as number;
  const merges = metaStrings(h, 'tokenizer.ggml.merges');
  if (!isSpm && !merges) fail("a 'gpt2' tokenizer needs tokenizer.ggml.merges");
  return {
    model: model as 'llama' | 'gpt2',
    tokens: tokens as string[],
    scores,
    tokenTypes,
    merges,
    pre: metaString(h, 'tokenizer.ggml.pre'),
    bosId,
    eosId: eosId as number,
    unknownId: id('unknown_token_id', isSpm ? 0 : undefined),
    addBos: metaBool(h, 'tokenizer.ggml.add_bos_token'),
    addEos: metaBool(h, 'tokenizer.ggml.add_eos_token'),
    addSpacePrefix: metaBool(h, 'tokenizer.ggml.add_space_prefix'),
    types: (i) => tokenTypes?.[i] ?? TOKEN_TYPE.NORMAL,
  };
}

function tokenizerFromVocab(v: Vocab, where: string, format: 'auto' | 'hf'): GgufTokenizer {
  if (v.model === 'gpt2') return { kind: 'hf', json: JSON.stringify(bpeToHfJson(v, where)) };
  if (format === 'auto' && fitsLlama2c(v)) return { kind: 'llama2c', bytes: llama2cTokenizerBin(v) };
  return { kind: 'hf', json: JSON.stringify(sentencePieceToHfJson(v, where)) };
}

const bytePiece = (b: number): string => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;

/** The layout llama2.c's tokenizer (and so the engine's) hard-codes. */
function fitsLlama2c(v: Vocab): boolean {
  if (v.bosId !== LLAMA2C_BOS || v.eosId !== LLAMA2C_EOS || v.tokens.length < 259) return false;
  if (v.addSpacePrefix === false) return false;
  for (let b = 0; b < 256; b++) if (v.tokens[3 + b] !== bytePiece(b)) return false;
  // id 0 prints nothing in llama2.c: it must be the unknown (or a control) token
  const t0 = v.types(0);
  if (v.tokenTypes && t0 !== TOKEN_TYPE.UNKNOWN && t0 !== TOKEN_TYPE.CONTROL) return false;
  for (let id = 0; id < v.tokens.length; id++) {
    const t = v.types(id);
    if (id > 2 && (t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.USER_DEFINED || t === TOKEN_TYPE.UNKNOWN))
      return false;
  }
  return true;
}

/** llama2.c's tokenizer.bin, as its export.py writes it: spaces for "▁", BOS/EOS as "\n<s>\n" / "\n</s>\n". */
function llama2cTokenizerBin(v: Vocab): Buffer {
  const pieces = v.tokens.map((t, id) =>
    Buffer.from(id === v.bosId || id === v.eosId ? `\n${t}\n` : t.replaceAll(SPACE_MARK, ' '), 'utf8'),
  );
  const maxLen = pieces.reduce((m, p) => Math.max(m, p.length), 1);
  const out = Buffer.alloc(4 + pieces.reduce((s, p) => s + 8 + p.length, 0));
  out.writeInt32LE(maxLen, 0);
  let at = 4;
  pieces.forEach((p, id) => {
    out.writeFloatLE(v.scores?.[id] ?? 0, at);
    out.writeInt32LE(p.length, at + 4);
    p.copy(out, at + 8);
    at += 8 + p.length;
  });
  return out;
}

// Split regexes of the byte-level pre-tokenizers, as in the models' own tokenizer.json files.
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const GPT2_NAMES = new Set(['default', 'gpt-2', 'gpt2']);
const LLAMA3_NAMES = new Set(['llama-bpe', 'llama3', 'llama-v3']);
const QWEN2_NAMES = new Set(['qwen2']);

function byteLevel(useRegex: boolean) {
  return { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex };
}

function splitThenBytes(regex: string) {
  return {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
      byteLevel(false),
    ],
  };
}

/** A byte-level BPE vocabulary (tokens are GPT-2's byte-to-unicode strings) as a tokenizer.json. */
function bpeToHfJson(v: Vocab, where: string) {
  const pre = v.pre ?? 'gpt-2';
  let preTokenizer: unknown;
  let normalizer: unknown = null;
  let ignoreMerges = false;
  if (GPT2_NAMES.has(pre)) preTokenizer = byteLevel(true);
  else if (LLAMA3_NAMES.has(pre)) {
    preTokenizer = splitThenBytes(LLAMA3_SPLIT);
    ignoreMerges = true;
  } else if (QWEN2_NAMES.has(pre)) {
    preTokenizer = splitThenBytes(QWEN2_SPLIT);
    normalizer = { type: 'NFC' };
  } else {
    throw new GgufError(
      `${where}: pre-tokenizer tokenizer.ggml.pre = '${pre}' is not supported ` +
        `(supported: ${[...GPT2_NAMES, ...LLAMA3_NAMES, ...QWEN2_NAMES].join(', ')})`,
    );
  }
  const vocab = uniqueVocab(v.tokens, where);
  const merges = (v.merges ?? []).map((m, i) => {
    const at = m.indexOf(' ', 1);
    if (at < 0)
      throw new GgufError(`${where}: tokenizer.ggml.merges[${i}] ${JSON.stringify(m)} has no space`);
    return [m.slice(0, at), m.slice(at + 1)];
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens(v.tokens, v.types),
    normalizer,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: ignoreMerges,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
}

// ---- writing ------------------------------------------------------------------------------------------

/** A tokenizer for the writer: a llama2.c tokenizer.bin (path or parsed), or tokenizer.ggml.* values. */
export type GgufTokenizerSource = string | Llama2cTokenizer | GgufVocab;

/**
 * A llama2.c vocabulary as llama.cpp's convert-llama2c-to-ggml names it: "▁" for spaces, <unk>/<s>/</s>
 * for ids 0-2 (unknown, control, control), <0xXX> pieces as byte tokens, empty pieces as control.
 */
export function llama2cVocab(tok: Llama2cTokenizer, where = 'tokenizer.bin'): GgufVocab {
  const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const tokens: string[] = [];
  const tokenTypes = new Int32Array(tok.vocabSize);
  tok.pieces.forEach((bytes, id) => {
    let text: string;
    try {
      text = utf8.decode(bytes);
    } catch {
      throw new GgufError(`${where}: piece ${id} is not valid UTF-8; GGUF token strings must be`);
    }
    let type: number = TOKEN_TYPE.NORMAL;
    if (id === 0) [text, type] = ['<unk>', TOKEN_TYPE.UNKNOWN];
    else if (id === LLAMA2C_BOS) [text, type] = ['<s>', TOKEN_TYPE.CONTROL];
    else if (id === LLAMA2C_EOS) [text, type] = ['</s>', TOKEN_TYPE.CONTROL];
    else if (text === '') type = TOKEN_TYPE.CONTROL;
    else if (/^<0x[0-9A-Fa-f]{2}>$/.test(text)) type = TOKEN_TYPE.BYTE;
    tokens.push(text.replaceAll(' ', SPACE_MARK));
    tokenTypes[id] = type;
  });
  return {
    model: 'llama',
    tokens,
    scores: tok.scores,
    tokenTypes,
    bosId: LLAMA2C_BOS,
    eosId: LLAMA2C_EOS,
    unknownId: 0,
    addBos: true,
    addEos: false,
  };
}

async function resolveVocab(src: GgufTokenizerSource): Promise<GgufVocab> {
  if (typeof src === 'string') return llama2cVocab(await readLlama2cTokenizer(src), src);
  if (src instanceof Llama2cTokenizer) return llama2cVocab(src);
  return src;
}

function vocabMetadata(v: GgufVocab, c: LlamaConfig, where: string): [string, GgufValue][] {
  const fail = (why: string): never => {
    throw new GgufError(`${where}: ${why}`);
  };
  const n = v.tokens.length;
  if (n !== c.vocabSize) fail(`the tokenizer has ${n} tokens, the model a vocabulary of ${c.vocabSize}`);
  if (v.bosId !== c.bosId || v.eosId !== c.eosId)
    fail(`the tokenizer's BOS/EOS ids ${v.bosId}/${v.eosId} differ from the model's ${c.bosId}/${c.eosId}`);
  if (v.model === 'gpt2' && !v.merges) fail("a 'gpt2' tokenizer needs merges");
  for (const [name, a] of [
    ['scores', v.scores],
    ['tokenTypes', v.tokenTypes],
  ] as const) {
    if (a && a.length !== n) fail(`tokenizer ${name} has ${a.length} entries for ${n} tokens`);
  }
  const out: [string, GgufValue][] = [['tokenizer.ggml.model', gguf.string(v.model)]];
  if (v.pre !== undefined) out.push(['tokenizer.ggml.pre', gguf.string(v.pre)]);
  out.push(['tokenizer.ggml.tokens', gguf.strings(v.tokens)]);
  if (v.scores) out.push(['tokenizer.ggml.scores', gguf.array('f32', Float32Array.from(v.scores))]);
  if (v.tokenTypes) out.push(['tokenizer.ggml.token_type', gguf.array('i32', Int32Array.from(v.tokenTypes))]);
  if (v.merges) out.push(['tokenizer.ggml.merges', gguf.strings(v.merges)]);
  out.push(['tokenizer.ggml.bos_token_id', gguf.u32(v.bosId)]);
  out.push(['tokenizer.ggml.eos_token_id', gguf.u32(v.eosId)]);
  if (v.unknownId !== undefined) out.push(['tokenizer.ggml.unknown_token_id', gguf.u32(v.unknownId)]);
  out.push(['tokenizer.ggml.add_bos_token', gguf.bool(v.addBos ?? true)]);
  out.push(['tokenizer.ggml.add_eos_token', gguf.bool(v.addEos ?? false)]);
  if (v.addSpacePrefix !== undefined)
    out.push(['tokenizer.ggml.add_space_prefix', gguf.bool(v.addSpacePrefix)]);
  return out;
}

/** The end ids past eos as llama.cpp's eot / eom token ids (a llama2.c config's BOS ending stays implied). */
function endMetadata(c: LlamaConfig, where: string): [string, GgufValue][] {
  if (!c.eosIds) return [];
  const [eos, ...more] = endTokenIds(c);
  if (eos !== c.eosId) throw new GgufError(`${where}: the first end id ${eos} is not the eos id ${c.eosId}`);
  if (more.length > 2)
    throw new GgufError(`${where}: ${more.length + 1} end ids; GGUF holds eos, eot and eom only`);
  return more.map((id, i) => [`tokenizer.ggml.${i === 0 ? 'eot' : 'eom'}_token_id`, gguf.u32(id)]);
}

export interface WriteGgufLlamaOptions {
  type: GgufFileType;
  /** general.name (default 'llama'). */
  name?: string;
  /** Written as tokenizer.chat_template. */
  chatTemplate?: string;
  onProgress?: ProgressFn;
}

export interface WriteGgufLlamaResult {
  bytes: number;
  sha256: string;
  /** GGUF tensor name -> ggml type written (q8_0/q4_0 files keep matrices whose columns are not a
   *  multiple of 32 in F32; norms are always F32). */
  tensorTypes: Record<string, string>;
}

/**
 * Writes the model as a GGUF that llama.cpp loads: `qwen2` architecture for Qwen2 (q/k/v biases,
 * rotate_half Q/K rows), else `llama` (Q/K rows back in interleaved order); norms and biases in F32,
 * matrices in `type` (exactly: q8/q4 matrices with 32-value blocks are written as they are, float
 * matrices quantized by llama.cpp's reference quantizers); linear rope scaling as metadata, llama3
 * scaling as the rope_freqs.weight factors convert_hf_to_gguf.py writes.
 */
export async function writeGgufLlama(
  path: string,
  model: LlamaModel,
  tokenizer: GgufTokenizerSource,
  options: WriteGgufLlamaOptions,
): Promise<WriteGgufLlamaResult> {
  const c = model.config;
  const w = model.weights;
  if (!(options.type in FILE_TYPE_IDS))
    throw new GgufError(
      `${path}: unknown GGUF file type '${options.type}' (${Object.keys(FILE_TYPE_IDS).join(', ')})`,
    );
  const vocab = await resolveVocab(tokenizer);
  const hd = headDim(c);
  const arch: GgufArch = c.family === 'qwen2' ? 'qwen2' : 'llama';
  if (c.qkvBias && arch !== 'qwen2') throw new GgufError(`${path}: q/k/v biases are written only as qwen2`);
  if (c.ropeScaling?.type === 'dynamic')
    throw new GgufError(`${path}: dynamic rope scaling has no GGUF form llama.cpp runs`);
  const a = (k: string) => `${arch}.${k}`;
  const metadata: [string, GgufValue][] = [
    ['general.architecture', gguf.string(arch)],
    ['general.name', gguf.string(options.name ?? arch)],
    ['general.alignment', gguf.u32(32)],
    ['general.file_type', gguf.u32(FILE_TYPE_IDS[options.type])],
    ['general.quantization_version', gguf.u32(2)],
    [a('context_length'), gguf.u32(c.maxSeqLen)],
    [a('embedding_length'), gguf.u32(c.dim)],
    [a('block_count'), gguf.u32(c.nLayers)],
    [a('feed_forward_length'), gguf.u32(c.hiddenDim)],
    [a('rope.dimension_count'), gguf.u32(hd)],
    [a('attention.head_count'), gguf.u32(c.nHeads)],
    [a('attention.head_count_kv'), gguf.u32(c.nKvHeads)],
    [a('attention.layer_norm_rms_epsilon'), gguf.f32(c.normEps)],
    [a('rope.freq_base'), gguf.f32(c.ropeTheta)],
    [a('vocab_size'), gguf.u32(c.vocabSize)],
    ...(c.headDim !== undefined
      ? ([
          [a('attention.key_length'), gguf.u32(hd)],
          [a('attention.value_length'), gguf.u32(hd)],
        ] as [string, GgufValue][])
      : []),
    ...(c.ropeScaling?.type === 'linear'
      ? ([
          [a('rope.scaling.type'), gguf.string('linear')],
          [a('rope.scaling.factor'), gguf.f32(c.ropeScaling.factor)],
        ] as [string, GgufValue][])
      : []),
    ...vocabMetadata(vocab, c, path),
    ...endMetadata(c, path),
    ...(options.chatTemplate
      ? ([['tokenizer.chat_template', gguf.string(options.chatTemplate)]] as [string, GgufValue][])
      : []),
  ];

  const tensorTypes: Record<string, string> = {};
  const tensors: GgufTensorSource[] = [];
  const addMatrix = (name: string, m: Matrix, order?: Int32Array) => {
    const type = matrixType(path, name, m, options.type);
    tensorTypes[name] = type;
    tensors.push({
      name,
      type: WRITE_TYPE_IDS[type],
      dims: [m.cols, m.rows],
      data: () => matrixToGgml(`${path}: tensor '${name}'`, order ? permuteRows(m, order) : m, type),
    });
  };
  const addNorm = (name: string, v: Float32Array) => {
    tensorTypes[name] = 'F32';
    tensors.push({ name, type: WRITE_TYPE_IDS.F32, dims: [v.length], data: vectorToGgml(v) });
  };
  const qOrder = arch === 'llama' ? interleavedRowOrder(c.nHeads, hd) : undefined;
  const kOrder = arch === 'llama' ? interleavedRowOrder(c.nKvHeads, hd) : undefined;
  if (c.ropeScaling?.type === 'llama3') addNorm(ROPE_FREQS, llama3FreqFactors(c));
  addMatrix(TOKEN_EMBD, w.tokenEmbedding);
  w.layers.forEach((layer, l) => {
    for (const key of LAYER_KEYS) {
      const name = ggufLayerTensorName(l, key);
      if (NORM_KEYS.has(key)) addNorm(name, layer[key] as Float32Array);
      else addMatrix(name, layer[key] as Matrix, key === 'wq' ? qOrder : key === 'wk' ? kOrder : undefined);
    }
    for (const key of BIAS_KEYS) {
      const b = layer[key];
      if (b) addNorm(ggufBiasTensorName(l, key), b);
    }
  });
  addNorm(OUTPUT_NORM, w.finalNorm);
  if (!c.tiedEmbeddings) addMatrix(OUTPUT, w.classifier);

  const { bytes, sha256 } = await writeGguf(path, { metadata, tensors }, { onProgress: options.onProgress });
  return { bytes, sha256, tensorTypes };
}

/** The ggml type a matrix is written as in a file of `fileType`; refuses what cannot be written exactly. */
function matrixType(path: string, name: string, m: Matrix, fileType: GgufFileType): GgmlWriteType {
  if (fileType === 'f32') return 'F32';
  if (fileType === 'f16') return 'F16';
  if (fileType === 'bf16') return 'BF16';
  const type = fileType === 'q8_0' ? 'Q8_0' : 'Q4_0';
  if (m.cols % 32 !== 0) return 'F32';
  const problem = blockExportProblem(m, type);
  if (problem) {
    throw new GgufError(
      `${path}: tensor '${name}' (${m.dtype}${isBlock(m) ? `, blocks of ${m.blockSize}` : ''}) cannot be ` +
        `written as ${type} exactly: ${problem} (convert it to a float dtype first)`,
    );
  }
  return type;
}
