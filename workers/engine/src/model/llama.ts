/**
 * The Llama architecture as the engine sees it: shapes and weights, independent of any file format.
 *
 * Conventions (every importer converts to these):
 * - Linear weights are row-major [out, in] (PyTorch `nn.Linear.weight` layout): y = W x.
 * - Rotary embeddings use the Hugging Face "rotate_half" layout: within a head, element i pairs with
 *   element i + headDim/2. llama2.c checkpoints (interleaved pairs) are permuted on import, exactly as
 *   Hugging Face's own conversion script does.
 */
export interface LlamaConfig {
  dim: number; // model width
  hiddenDim: number; // SwiGLU inner width
  nLayers: number;
  nHeads: number; // query heads
  nKvHeads: number; // key/value heads (grouped-query attention when < nHeads)
  vocabSize: number;
  maxSeqLen: number; // longest context the rotary tables and KV cache are sized for
  normEps: number; // RMSNorm epsilon
  ropeTheta: number;
  tiedEmbeddings: boolean; // classifier shares the token embedding
  bosId: number;
  eosId: number;
}

export const headDim = (c: LlamaConfig): number => c.dim / c.nHeads;

export interface LayerWeights {
  attnNorm: Float32Array; // [dim]
  wq: Float32Array; // [nHeads*headDim, dim]
  wk: Float32Array; // [nKvHeads*headDim, dim]
  wv: Float32Array; // [nKvHeads*headDim, dim]
  wo: Float32Array; // [dim, nHeads*headDim]
  ffnNorm: Float32Array; // [dim]
  w1: Float32Array; // gate [hiddenDim, dim]
  w2: Float32Array; // down [dim, hiddenDim]
  w3: Float32Array; // up   [hiddenDim, dim]
}

export interface LlamaWeights {
  tokenEmbedding: Float32Array; // [vocabSize, dim]
  layers: LayerWeights[]; // nLayers
  finalNorm: Float32Array; // [dim]
  classifier: Float32Array; // [vocabSize, dim]; the same array as tokenEmbedding when tied
}

export interface LlamaModel {
  config: LlamaConfig;
  weights: LlamaWeights;
}

/**
 * Early-exit head: maps the hidden state after layer `afterLayer` to next-token logits.
 * `affine` (W [dim, dim] row-major, b [dim]) is applied first, then the model's own final norm and
 * classifier ("logit lens" when affine is absent).
 */
export interface ExitHead {
  afterLayer: number; // 1-based count of layers run before the exit (E in the design note)
  affine?: { weight: Float32Array; bias: Float32Array };
  /**
   * Cheap draft head: score only these token ids (a frequency-ranked subset of the vocabulary).
   * `classifierRows` holds the matching classifier rows [vocab.length, dim], gathered before graph
   * building; the head's logits are then [R, vocab.length], column i scoring token vocab[i].
   */
  vocab?: Int32Array;
  classifierRows?: Float32Array;
}

/** Sub-layers a layer-skipping draft (Draft & Verify) leaves out; layer indices are 0-based. */
export interface SkipSet {
  attention: number[];
  mlp: number[];
}

/** Expected element count of every tensor, for importers and corrupt-file checks. */
export function tensorShapes(c: LlamaConfig): Record<string, number[]> {
  const hd = headDim(c);
  return {
    tokenEmbedding: [c.vocabSize, c.dim],
    attnNorm: [c.dim],
    wq: [c.nHeads * hd, c.dim],
    wk: [c.nKvHeads * hd, c.dim],
    wv: [c.nKvHeads * hd, c.dim],
    wo: [c.dim, c.nHeads * hd],
    ffnNorm: [c.dim],
    w1: [c.hiddenDim, c.dim],
    w2: [c.dim, c.hiddenDim],
    w3: [c.hiddenDim, c.dim],
    finalNorm: [c.dim],
    classifier: [c.vocabSize, c.dim],
  };
}
