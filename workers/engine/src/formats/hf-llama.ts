/**
 * The Hugging Face Llama naming of config fields and tensors (LlamaForCausalLM), shared by the HF folder
 * reader/writer and the model package (whose weights.safetensors uses the same tensor names).
 */
import { type LayerWeights, type LlamaConfig, type LlamaModel, tensorShapes } from '../model/llama';
import type { Tensor } from './safetensors';

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

/** Every tensor of the model under its HF name, in HF order; `lm_head.weight` only when untied. */
export function modelToHfTensors(model: LlamaModel): [string, Tensor][] {
  const c = model.config;
  const shapes = tensorShapes(c);
  const w = model.weights;
  const out: [string, Tensor][] = [[EMBED_TOKENS, { shape: shapes.tokenEmbedding, data: w.tokenEmbedding }]];
  w.layers.forEach((layer, l) => {
    for (const key of LAYER_KEYS)
      out.push([layerTensorName(l, key), { shape: shapes[key], data: layer[key] }]);
  });
  out.push([FINAL_NORM, { shape: shapes.finalNorm, data: w.finalNorm }]);
  if (!c.tiedEmbeddings) out.push([LM_HEAD, { shape: shapes.classifier, data: w.classifier }]);
  return out;
}

/** Names of the tensors `modelFromHfTensors` needs for this config. */
export function requiredHfTensorNames(c: LlamaConfig): string[] {
  const names = [EMBED_TOKENS, FINAL_NORM];
  for (let l = 0; l < c.nLayers; l++) for (const key of LAYER_KEYS) names.push(layerTensorName(l, key));
  if (!c.tiedEmbeddings) names.push(LM_HEAD);
  return names;
}

/**
 * Builds the model from HF-named tensors, checking every shape against the config. `where` names the
 * source in error messages.
 */
export function modelFromHfTensors(
  config: LlamaConfig,
  tensors: Map<string, Tensor>,
  where: string,
): LlamaModel {
  const shapes = tensorShapes(config);
  const take = (name: string, shape: number[]): Float32Array => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${where}: missing tensor '${name}'`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new Error(
        `${where}: tensor '${name}' has shape [${t.shape}], expected [${shape}] for this config`,
      );
    }
    return t.data;
  };
  const tokenEmbedding = take(EMBED_TOKENS, shapes.tokenEmbedding);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const layer = {} as LayerWeights;
    for (const key of LAYER_KEYS) layer[key] = take(layerTensorName(l, key), shapes[key]);
    layers.push(layer);
  }
  const finalNorm = take(FINAL_NORM, shapes.finalNorm);
  const classifier = config.tiedEmbeddings ? tokenEmbedding : take(LM_HEAD, shapes.classifier);
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
