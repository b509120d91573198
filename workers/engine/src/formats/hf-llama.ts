/**
 * The Hugging Face Llama naming of config fields and tensors (LlamaForCausalLM), shared by the HF folder
 * reader/writer and the model package (whose weights.safetensors uses the same tensor names).
 */
import {
  BIAS_KEYS,
  endTokenIds,
  headDim,
  type LayerWeights,
  type LlamaConfig,
  type LlamaModel,
  type MatrixKey,
  type ModelFamily,
  type RopeScaling,
  tensorShapes,
} from '../model/llama';
import { f32Matrix, isBlock, type Matrix, type MatrixDtype, nBlocks } from '../model/matrix';
import type { StoredTensor, Tensor } from './safetensors';

const LAYER_TENSORS: Record<keyof LayerWeights, string> = {
  attnNorm: 'input_layernorm.weight',
  wq: 'self_attn.q_proj.weight',
  wk: 'self_attn.k_proj.weight',
  wv: 'self_attn.v_proj.weight',
  wo: 'self_attn.o_proj.weight',
  ffnNorm: 'post_attention_layernorm.weight',
  w1: 'mlp.gate_proj.weight',
  w2: 'mlp.down_proj.weight',
  w3: 'mlp.up_proj.weight',
  bq: 'self_attn.q_proj.bias',
  bk: 'self_attn.k_proj.bias',
  bv: 'self_attn.v_proj.bias',
};
const LAYER_KEYS = Object.keys(LAYER_TENSORS) as (keyof LayerWeights)[];

export const EMBED_TOKENS = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';
export const layerTensorName = (layer: number, key: keyof LayerWeights): string =>
  `model.layers.${layer}.${LAYER_TENSORS[key]}`;

/** Suffixes of the extra tensors a blockwise matrix `<name>` brings (its codes are `<name>` itself). */
export const SCALES_SUFFIX = '.scales';
export const ZERO_POINTS_SUFFIX = '.zero_points';

/** Per-tensor storage, as the manifest records it. */
export interface TensorDtype {
  dtype: MatrixDtype;
  blockSize?: number;
}

/** The stored tensors of one matrix: itself, or its codes + scales (+ zero points). */
function matrixTensors(name: string, m: Matrix): [string, StoredTensor][] {
  if (m.dtype === 'f32') return [[name, { dtype: 'F32', shape: [m.rows, m.cols], data: m.data }]];
  if (!isBlock(m)) {
    return [[name, { dtype: m.dtype === 'f16' ? 'F16' : 'BF16', shape: [m.rows, m.cols], data: m.data }]];
  }
  const nb = nBlocks(m);
  const out: [string, StoredTensor][] = [
    [name, { dtype: 'U8', shape: [m.rows, nb, m.codes.length / (m.rows * nb)], data: m.codes }],
    [name + SCALES_SUFFIX, { dtype: 'F32', shape: [m.rows, nb], data: m.scales }],
  ];
  if (m.zeroPoints)
    out.push([name + ZERO_POINTS_SUFFIX, { dtype: 'F32', shape: [m.rows, nb], data: m.zeroPoints }]);
  return out;
}

/** Every matrix and norm of the model under its HF name, in HF order; `lm_head.weight` only when untied. */
function hfEntries(model: LlamaModel): [string, Matrix | Float32Array][] {
  const w = model.weights;
  const out: [string, Matrix | Float32Array][] = [[EMBED_TOKENS, w.tokenEmbedding]];
  w.layers.forEach((layer, l) => {
    for (const key of LAYER_KEYS) {
      const t = layer[key];
      if (t) out.push([layerTensorName(l, key), t]);
    }
  });
  out.push([FINAL_NORM, w.finalNorm]);
  if (!model.config.tiedEmbeddings) out.push([LM_HEAD, w.classifier]);
  return out;
}

/** Every tensor of the model as stored, under HF names (blockwise matrices as codes + scales). */
export function modelToHfTensors(model: LlamaModel): [string, StoredTensor][] {
  return hfEntries(model).flatMap(([name, t]): [string, StoredTensor][] =>
    t instanceof Float32Array
      ? [[name, { dtype: 'F32', shape: [t.length], data: t }]]
      : matrixTensors(name, t),
  );
}

/** The dtype of every matrix by HF name (norms are always f32 and not listed). */
export function modelTensorDtypes(model: LlamaModel): Record<string, TensorDtype> {
  const out: Record<string, TensorDtype> = {};
  for (const [name, t] of hfEntries(model)) {
    if (t instanceof Float32Array) continue;
    out[name] = isBlock(t) ? { dtype: t.dtype, blockSize: t.blockSize } : { dtype: t.dtype };
  }
  return out;
}

/** Names of the tensors `modelFromHfTensors` needs for this config. */
export function requiredHfTensorNames(c: LlamaConfig): string[] {
  const names = [EMBED_TOKENS, FINAL_NORM];
  const keys = LAYER_KEYS.filter((k) => c.qkvBias || !(BIAS_KEYS as string[]).includes(k));
  for (let l = 0; l < c.nLayers; l++) for (const key of keys) names.push(layerTensorName(l, key));
  if (!c.tiedEmbeddings) names.push(LM_HEAD);
  return names;
}

type AnyTensor = Tensor | StoredTensor;
const sameShape = (a: number[], b: number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/** A matrix [rows, cols] from its stored tensor(s); `where` names the source in errors. */
function takeMatrix(tensors: Map<string, AnyTensor>, name: string, shape: number[], where: string): Matrix {
  const t = tensors.get(name);
  if (!t) throw new Error(`${where}: missing tensor '${name}'`);
  const [rows, cols] = shape;
  const scales = tensors.get(name + SCALES_SUFFIX);
  if (!scales) {
    if (!sameShape(t.shape, shape))
      throw new Error(
        `${where}: tensor '${name}' has shape [${t.shape}], expected [${shape}] for this config`,
      );
    if (!('dtype' in t) || t.dtype === 'F32') return f32Matrix(t.data as Float32Array, rows, cols);
    if (t.dtype === 'U8')
      throw new Error(`${where}: tensor '${name}' is U8 but has no '${name}${SCALES_SUFFIX}'`);
    return { dtype: t.dtype === 'F16' ? 'f16' : 'bf16', rows, cols, data: t.data };
  }
  // blockwise: codes U8 [rows, nBlocks, blockBytes], scales F32 [rows, nBlocks]
  const [r, nb, blockBytes] = t.shape;
  const blockSize = cols / nb;
  const bits = (8 * blockBytes) / blockSize;
  const zp = tensors.get(name + ZERO_POINTS_SUFFIX);
  const bad = (why: string): never => {
    throw new Error(`${where}: blockwise tensor '${name}' ${why}`);
  };
  if (!('dtype' in t) || t.dtype !== 'U8' || t.shape.length !== 3) bad('must be U8 [rows, blocks, bytes]');
  if (r !== rows || !Number.isInteger(blockSize) || (bits !== 4 && bits !== 8))
    bad(`has shape [${t.shape}], which is no 4- or 8-bit blocking of [${shape}]`);
  if (!('dtype' in scales) || scales.dtype !== 'F32' || !sameShape(scales.shape, [rows, nb]))
    bad(`needs F32 scales [${rows}, ${nb}]`);
  if (zp && (!('dtype' in zp) || zp.dtype !== 'F32' || !sameShape(zp.shape, [rows, nb])))
    bad(`needs F32 zero points [${rows}, ${nb}]`);
  return {
    dtype: bits === 4 ? 'q4' : 'q8',
    rows,
    cols,
    blockSize,
    codes: t.data as Uint8Array,
    scales: scales.data as Float32Array,
    ...(zp ? { zeroPoints: zp.data as Float32Array } : {}),
  };
}

/**
 * Builds the model from HF-named tensors (f32 Tensors, or StoredTensors in any package dtype), checking
 * every shape against the config. `where` names the source in error messages.
 */
export function modelFromHfTensors(
  config: LlamaConfig,
  tensors: Map<string, AnyTensor>,
  where: string,
): LlamaModel {
  const shapes = tensorShapes(config);
  // norms and biases: f32 vectors
  const norm = (name: string, shape: number[]): Float32Array => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${where}: missing tensor '${name}'`);
    if (!sameShape(t.shape, shape))
      throw new Error(
        `${where}: tensor '${name}' has shape [${t.shape}], expected [${shape}] for this config`,
      );
    if ('dtype' in t && t.dtype !== 'F32')
      throw new Error(`${where}: vector '${name}' must be F32, is ${t.dtype}`);
    return t.data as Float32Array;
  };
  const tokenEmbedding = takeMatrix(tensors, EMBED_TOKENS, shapes.tokenEmbedding, where);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const m = (key: MatrixKey) => takeMatrix(tensors, layerTensorName(l, key), shapes[key], where);
    const b = (key: keyof LayerWeights) => norm(layerTensorName(l, key), shapes[key]);
    layers.push({
      attnNorm: norm(layerTensorName(l, 'attnNorm'), shapes.attnNorm),
      wq: m('wq'),
      wk: m('wk'),
      wv: m('wv'),
      wo: m('wo'),
      ffnNorm: norm(layerTensorName(l, 'ffnNorm'), shapes.ffnNorm),
      w1: m('w1'),
      w2: m('w2'),
      w3: m('w3'),
      ...(config.qkvBias ? { bq: b('bq'), bk: b('bk'), bv: b('bv') } : {}),
    });
  }
  const finalNorm = norm(FINAL_NORM, shapes.finalNorm);
  const classifier = config.tiedEmbeddings
    ? tokenEmbedding
    : takeMatrix(tensors, LM_HEAD, shapes.classifier, where);
  return { config, weights: { tokenEmbedding, layers, finalNorm, classifier } };
}

/** The subset of a HF config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) the engine reads and writes. */
export interface HfLlamaConfigJson {
  architectures?: string[];
  model_type?: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  vocab_size: number;
  max_position_embeddings: number;
  rms_norm_eps?: number;
  rope_theta?: number;
  rope_scaling?: Record<string, unknown> | null;
  tie_word_embeddings?: boolean;
  bos_token_id?: number | null;
  eos_token_id?: number | number[] | null;
  hidden_act?: string;
  head_dim?: number | null;
  attention_bias?: boolean;
  mlp_bias?: boolean;
  sliding_window?: number | null;
  use_sliding_window?: boolean;
  [key: string]: unknown;
}

/** generation_config.json: only its end-of-sequence ids matter to the engine. */
export interface HfGenerationConfigJson {
  eos_token_id?: number | number[] | null;
  [key: string]: unknown;
}

const FAMILY_OF_MODEL_TYPE: Record<string, ModelFamily> = {
  llama: 'llama',
  mistral: 'mistral',
  qwen2: 'qwen2',
};
const ARCHITECTURE: Record<ModelFamily, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

/** rope_scaling as HF writes it (rope_type, the parameters the engine reads), or null for plain RoPE. */
function ropeScalingToHf(s: RopeScaling | undefined): Record<string, unknown> | null {
  if (!s) return null;
  if (s.type === 'linear' || s.type === 'dynamic') return { rope_type: s.type, factor: s.factor };
  return {
    rope_type: 'llama3',
    factor: s.factor,
    low_freq_factor: s.lowFreqFactor,
    high_freq_factor: s.highFreqFactor,
    original_max_position_embeddings: s.originalMaxPositionEmbeddings,
  };
}

export function configToHfJson(c: LlamaConfig): HfLlamaConfigJson {
  const family = c.family ?? 'llama';
  const eos = endTokenIds(c);
  const out: HfLlamaConfigJson = {
    architectures: [ARCHITECTURE[family]],
    model_type: family,
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: headDim(c),
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxSeqLen,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    rope_scaling: ropeScalingToHf(c.ropeScaling),
    tie_word_embeddings: c.tiedEmbeddings,
    bos_token_id: c.bosId < 0 ? null : c.bosId,
    eos_token_id: eos.length === 1 ? eos[0] : eos,
    hidden_act: 'silu',
    torch_dtype: 'float32',
  };
  if (family === 'llama') Object.assign(out, { attention_bias: false, mlp_bias: false });
  if (family === 'mistral') out.sliding_window = null;
  if (family === 'qwen2') Object.assign(out, { use_sliding_window: false, sliding_window: c.maxSeqLen });
  return out;
}

export interface HfConfigOptions {
  /** generation_config.json next to config.json: its eos ids end generation too. */
  generation?: HfGenerationConfigJson;
  /** Serve at most this many positions (default: max_position_embeddings). */
  maxSeqLen?: number;
}

/**
 * Reads a HF config of a Llama-block model (Llama 1/2/3.x, TinyLlama, SmolLM, Mistral, Qwen2/2.5),
 * refusing features the engine does not implement, naming the field and its value, rather than ignoring them.
 */
export function configFromHfJson(
  j: HfLlamaConfigJson,
  where: string,
  opts: HfConfigOptions = {},
): LlamaConfig {
  const fail = (why: string): never => {
    throw new Error(`${where}: unsupported model config: ${why}`);
  };
  const arch = j.architectures?.[0];
  const byArch = Object.entries(ARCHITECTURE).find(([, a]) => a === arch)?.[0] as ModelFamily | undefined;
  const family = j.model_type !== undefined ? FAMILY_OF_MODEL_TYPE[j.model_type] : (byArch ?? 'llama');
  const known = Object.keys(FAMILY_OF_MODEL_TYPE).join(', ');
  if (!family) fail(`model_type '${j.model_type}' (runs ${known})`);
  if (arch !== undefined && arch !== ARCHITECTURE[family])
    fail(
      `architectures[0] '${arch}' with model_type '${family}' (runs ${Object.values(ARCHITECTURE).join(', ')})`,
    );
  for (const field of [
    'hidden_size',
    'intermediate_size',
    'num_hidden_layers',
    'num_attention_heads',
    'vocab_size',
    'max_position_embeddings',
  ]) {
    const v = j[field];
    if (!Number.isInteger(v) || (v as number) <= 0)
      fail(`'${field}' must be a positive integer, got ${JSON.stringify(v)}`);
  }
  const nKvHeads = j.num_key_value_heads ?? j.num_attention_heads;
  if (j.num_attention_heads % nKvHeads !== 0)
    fail('num_attention_heads must be a multiple of num_key_value_heads');
  // head_dim: explicit (Llama 3.2, Mistral-Nemo) or hidden_size / num_attention_heads, as transformers reads it
  const explicitHd = j.head_dim ?? undefined;
  if (explicitHd !== undefined && (!Number.isInteger(explicitHd) || explicitHd <= 0 || explicitHd % 2 !== 0))
    fail(`head_dim ${JSON.stringify(explicitHd)} must be a positive even integer`);
  if (explicitHd === undefined && j.hidden_size % j.num_attention_heads !== 0)
    fail('hidden_size must be a multiple of num_attention_heads when head_dim is not given');
  const hd = explicitHd ?? j.hidden_size / j.num_attention_heads;
  if (hd % 2 !== 0) fail(`head size ${hd} is odd (rotary embeddings need an even one)`);
  if (j.hidden_act !== undefined && j.hidden_act !== 'silu')
    fail(`hidden_act '${j.hidden_act}' (only 'silu')`);
  if (j.mlp_bias) fail('mlp_bias = true (MLP projections without bias only)');
  if (family !== 'qwen2' && j.attention_bias)
    fail("attention_bias = true (it biases o_proj too; only Qwen2's q/k/v biases run)");
  const partial = j.partial_rotary_factor;
  if (partial !== undefined && partial !== 1)
    fail(`partial_rotary_factor ${JSON.stringify(partial)} (only 1)`);

  const served = Math.min(j.max_position_embeddings, opts.maxSeqLen ?? Number.POSITIVE_INFINITY);
  if (family === 'qwen2' && j.use_sliding_window)
    fail('use_sliding_window = true (sliding-window attention is not implemented)');
  if (family === 'mistral' && j.sliding_window != null && j.sliding_window < served)
    fail(
      `sliding_window ${j.sliding_window} is shorter than the served context of ${served} positions ` +
        `(sliding-window attention is not implemented; serve at most ${j.sliding_window} positions, ` +
        `e.g. ppsd import --max-seq-len ${j.sliding_window})`,
    );

  // rope: transformers 4.x `rope_scaling`, or 5.x `rope_parameters` (which also carries rope_theta)
  const ropeParams = (j.rope_parameters ?? null) as Record<string, unknown> | null;
  const theta = j.rope_theta ?? (ropeParams?.rope_theta as number | undefined) ?? 10000;
  const ropeScaling = ropeScalingFromHf(
    j.rope_scaling ?? ropeParams,
    j.max_position_embeddings,
    served,
    fail,
  );

  const ids = (v: number | number[] | null | undefined): number[] =>
    v === null || v === undefined ? [] : Array.isArray(v) ? v : [v];
  // every id config.json or generation_config.json calls end-of-sequence ends a generation
  const eosIds = [...new Set([...ids(j.eos_token_id), ...ids(opts.generation?.eos_token_id)])];
  for (const id of eosIds) if (!Number.isInteger(id) || id < 0) fail(`eos_token_id ${JSON.stringify(id)}`);
  if (eosIds.length === 0) fail('no eos_token_id in config.json or generation_config.json');
  return {
    dim: j.hidden_size,
    hiddenDim: j.intermediate_size,
    nLayers: j.num_hidden_layers,
    nHeads: j.num_attention_heads,
    nKvHeads,
    vocabSize: j.vocab_size,
    maxSeqLen: served,
    normEps: j.rms_norm_eps ?? 1e-6,
    ropeTheta: theta,
    tiedEmbeddings: j.tie_word_embeddings ?? false,
    bosId: j.bos_token_id ?? -1,
    eosId: eosIds[0],
    eosIds,
    ...(explicitHd !== undefined && explicitHd !== j.hidden_size / j.num_attention_heads
      ? { headDim: explicitHd }
      : {}),
    ...(ropeScaling ? { ropeScaling } : {}),
    ...(family === 'qwen2' ? { qkvBias: true } : {}),
    ...(family !== 'llama' ? { family } : {}),
  };
}

const ROPE_FIELDS: Record<string, string[]> = {
  linear: ['factor'],
  dynamic: ['factor'],
  llama3: ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'],
};

/** HF rope_scaling -> RopeScaling (undefined: plain RoPE); every other type or field is refused. */
function ropeScalingFromHf(
  scaling: Record<string, unknown> | null | undefined,
  maxPositions: number,
  served: number,
  fail: (why: string) => never,
): RopeScaling | undefined {
  if (!scaling) return undefined;
  const kind = scaling.rope_type ?? scaling.type;
  if (kind === 'default') return undefined;
  const fields = ROPE_FIELDS[String(kind)];
  if (!fields)
    fail(
      `rope_scaling type '${String(kind)}' is not implemented (runs default, ${Object.keys(ROPE_FIELDS).join(', ')})`,
    );
  const extra = Object.keys(scaling).filter(
    (k) => !['rope_type', 'type', 'rope_theta', ...fields].includes(k),
  );
  if (extra.length > 0) fail(`rope_scaling field '${extra[0]}' (type '${kind}' reads ${fields.join(', ')})`);
  const num = (k: string): number => {
    const v = scaling[k];
    if (typeof v !== 'number' || !(v > 0))
      fail(`rope_scaling.${k} must be a positive number, got ${JSON.stringify(v)}`);
    return v as number;
  };
  if (kind === 'linear') return { type: 'linear', factor: num('factor') };
  if (kind === 'dynamic') {
    // NTK rescaling starts only past max_position_embeddings; within it RoPE is plain (graph/rope.ts)
    if (served > maxPositions) fail(`rope_scaling 'dynamic' beyond max_position_embeddings ${maxPositions}`);
    return { type: 'dynamic', factor: num('factor'), maxPositionEmbeddings: maxPositions };
  }
  const low = num('low_freq_factor');
  const high = num('high_freq_factor');
  if (!(high > low)) fail(`rope_scaling high_freq_factor ${high} must exceed low_freq_factor ${low}`);
  return {
    type: 'llama3',
    factor: num('factor'),
    lowFreqFactor: low,
    highFreqFactor: high,
    originalMaxPositionEmbeddings: num('original_max_position_embeddings'),
  };
}
