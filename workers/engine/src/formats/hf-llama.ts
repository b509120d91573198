/**
 * The Hugging Face Llama naming of config fields and tensors (LlamaForCausalLM), shared by the HF folder
 * reader/writer and the model package (whose weights.safetensors uses the same tensor names).
 */
import {
  type LayerWeights,
  type LlamaConfig,
  type LlamaModel,
  type MatrixKey,
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
    for (const key of LAYER_KEYS) out.push([layerTensorName(l, key), layer[key]]);
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
  for (let l = 0; l < c.nLayers; l++) for (const key of LAYER_KEYS) names.push(layerTensorName(l, key));
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
  const norm = (name: string, shape: number[]): Float32Array => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${where}: missing tensor '${name}'`);
    if (!sameShape(t.shape, shape))
      throw new Error(
        `${where}: tensor '${name}' has shape [${t.shape}], expected [${shape}] for this config`,
      );
    if ('dtype' in t && t.dtype !== 'F32')
      throw new Error(`${where}: norm '${name}' must be F32, is ${t.dtype}`);
    return t.data as Float32Array;
  };
  const tokenEmbedding = takeMatrix(tensors, EMBED_TOKENS, shapes.tokenEmbedding, where);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const m = (key: MatrixKey) => takeMatrix(tensors, layerTensorName(l, key), shapes[key], where);
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
    });
  }
  const finalNorm = norm(FINAL_NORM, shapes.finalNorm);
  const classifier = config.tiedEmbeddings
    ? tokenEmbedding
    : takeMatrix(tensors, LM_HEAD, shapes.classifier, where);
  return { config, weights: { tokenEmbedding, layers, finalNorm, classifier } };
}

/** The subset of a HF LlamaForCausalLM config.json the engine reads and writes. */
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
  head_dim?: number;
  attention_bias?: boolean;
  mlp_bias?: boolean;
  [key: string]: unknown;
}

export function configToHfJson(c: LlamaConfig): HfLlamaConfigJson {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: c.dim / c.nHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxSeqLen,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    tie_word_embeddings: c.tiedEmbeddings,
    bos_token_id: c.bosId,
    eos_token_id: c.eosId,
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'float32',
  };
}

/** Reads a HF Llama config, refusing features the engine does not implement rather than ignoring them. */
export function configFromHfJson(j: HfLlamaConfigJson, where: string): LlamaConfig {
  const fail = (why: string): never => {
    throw new Error(`${where}: unsupported model config: ${why}`);
  };
  const arch = j.architectures?.[0];
  if (j.model_type !== undefined && j.model_type !== 'llama')
    fail(`model_type '${j.model_type}' (only 'llama')`);
  if (arch !== undefined && arch !== 'LlamaForCausalLM')
    fail(`architecture '${arch}' (only LlamaForCausalLM)`);
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
  if (j.hidden_size % j.num_attention_heads !== 0)
    fail('hidden_size must be a multiple of num_attention_heads');
  if (j.num_attention_heads % nKvHeads !== 0)
    fail('num_attention_heads must be a multiple of num_key_value_heads');
  const hd = j.hidden_size / j.num_attention_heads;
  if (j.head_dim !== undefined && j.head_dim !== null && j.head_dim !== hd) {
    fail(`head_dim ${j.head_dim} differs from hidden_size / num_attention_heads = ${hd}`);
  }
  if (j.hidden_act !== undefined && j.hidden_act !== 'silu')
    fail(`hidden_act '${j.hidden_act}' (only 'silu')`);
  if (j.attention_bias) fail('attention_bias = true (projections without bias only)');
  if (j.mlp_bias) fail('mlp_bias = true (projections without bias only)');
  const scaling = j.rope_scaling;
  if (scaling) {
    const kind = scaling.rope_type ?? scaling.type;
    if (kind !== 'default')
      fail(`rope_scaling of type '${String(kind)}' is not implemented (plain RoPE only)`);
  }
  // Some configs list several end-of-sequence ids; the engine stops on the first.
  const eos = Array.isArray(j.eos_token_id) ? j.eos_token_id[0] : j.eos_token_id;
  return {
    dim: j.hidden_size,
    hiddenDim: j.intermediate_size,
    nLayers: j.num_hidden_layers,
    nHeads: j.num_attention_heads,
    nKvHeads,
    vocabSize: j.vocab_size,
    maxSeqLen: j.max_position_embeddings,
    normEps: j.rms_norm_eps ?? 1e-6,
    ropeTheta: j.rope_theta ?? 10000,
    tiedEmbeddings: j.tie_word_embeddings ?? false,
    bosId: j.bos_token_id ?? 1,
    eosId: eos ?? 2,
  };
}
