/**
 * The Llama architecture as the engine sees it: shapes and weights, independent of any file format.
 *
 * Conventions (every importer converts to these):
 * - Linear weights are row-major [out, in] (PyTorch `nn.Linear.weight` layout): y = W x, in any of the
 *   package dtypes (model/matrix.ts).
 * - Rotary embeddings use the Hugging Face "rotate_half" layout: within a head, element i pairs with
 *   element i + headDim/2. llama2.c checkpoints (interleaved pairs) are permuted on import, exactly as
 *   Hugging Face's own conversion script does.
 */
import { convertMatrix, f32Matrix, type Matrix, type MatrixDtype } from './matrix';

/**
 * RoPE frequency scaling, as transformers' rope init functions define it (graph/rope.ts computes it):
 * - linear: every inverse frequency divided by `factor` (position interpolation);
 * - llama3: Llama 3.1's smooth per-frequency interpolation around `originalMaxPositionEmbeddings`;
 * - dynamic: NTK rescaling that starts only past `maxPositionEmbeddings`; within it (the engine never
 *   serves more, see graph/rope.ts) the frequencies are the plain ones.
 */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | { type: 'dynamic'; factor: number; maxPositionEmbeddings: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

/** The Hugging Face families the engine runs, all the Llama block (RMSNorm, RoPE, GQA, SwiGLU). */
export type ModelFamily = 'llama' | 'mistral' | 'qwen2';

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
  /** Every id that ends a generation (HF: `eos_token_id`, possibly a list). Absent in packages written
   *  before the field: [eosId, bosId] (llama2.c ends a story at BOS). */
  eosIds?: number[];
  /** Per-head width when it is not dim / nHeads (HF `head_dim`, e.g. Mistral-Nemo: 128 at 5120 / 32). */
  headDim?: number;
  ropeScaling?: RopeScaling;
  /** The q/k/v projections add a bias vector (Qwen2); o_proj and the MLP never do. */
  qkvBias?: boolean;
  /** Where the config came from, so writers name the architecture again (absent: llama). */
  family?: ModelFamily;
}

export const headDim = (c: LlamaConfig): number => c.headDim ?? c.dim / c.nHeads;

/** The ids a generation stops at. */
export const endTokenIds = (c: LlamaConfig): number[] => c.eosIds ?? [c.eosId, c.bosId];

/** Matrices are stored in any package dtype (see matrix.ts); norm vectors are always f32. */
export interface LayerWeights {
  attnNorm: Float32Array; // [dim]
  wq: Matrix; // [nHeads*headDim, dim]
  wk: Matrix; // [nKvHeads*headDim, dim]
  wv: Matrix; // [nKvHeads*headDim, dim]
  wo: Matrix; // [dim, nHeads*headDim]
  ffnNorm: Float32Array; // [dim]
  w1: Matrix; // gate [hiddenDim, dim]
  w2: Matrix; // down [dim, hiddenDim]
  w3: Matrix; // up   [hiddenDim, dim]
  // q/k/v biases, only with config.qkvBias (f32 like the norms)
  bq?: Float32Array; // [nHeads*headDim]
  bk?: Float32Array; // [nKvHeads*headDim]
  bv?: Float32Array; // [nKvHeads*headDim]
}

export type BiasKey = 'bq' | 'bk' | 'bv';
export const BIAS_KEYS: readonly BiasKey[] = ['bq', 'bk', 'bv'];

export type MatrixKey = 'wq' | 'wk' | 'wv' | 'wo' | 'w1' | 'w2' | 'w3';
export const MATRIX_KEYS: readonly MatrixKey[] = ['wq', 'wk', 'wv', 'wo', 'w1', 'w2', 'w3'];

export interface LlamaWeights {
  tokenEmbedding: Matrix; // [vocabSize, dim]
  layers: LayerWeights[]; // nLayers
  finalNorm: Float32Array; // [dim]
  classifier: Matrix; // [vocabSize, dim]; the same object as tokenEmbedding when tied
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
  classifierRows?: Matrix;
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
    bq: [c.nHeads * hd],
    bk: [c.nKvHeads * hd],
    bv: [c.nKvHeads * hd],
    finalNorm: [c.dim],
    classifier: [c.vocabSize, c.dim],
  };
}

/** f32 arrays, as f32-only importers read them, in the layout `tensorShapes` gives. */
export interface F32Arrays {
  tokenEmbedding: Float32Array;
  layers: (Record<Exclude<keyof LayerWeights, BiasKey>, Float32Array> &
    Partial<Record<BiasKey, Float32Array>>)[];
  finalNorm: Float32Array;
  classifier: Float32Array; // the same array as tokenEmbedding when tied
}

/** Wraps f32 arrays into model weights (a tied classifier stays the same object as the embedding). */
export function f32Weights(c: LlamaConfig, a: F32Arrays): LlamaWeights {
  const shapes = tensorShapes(c);
  const m = (key: keyof ReturnType<typeof tensorShapes>, data: Float32Array) =>
    f32Matrix(data, shapes[key][0], shapes[key][1]);
  const tokenEmbedding = m('tokenEmbedding', a.tokenEmbedding);
  const layers = a.layers.map((l) => ({
    attnNorm: l.attnNorm,
    wq: m('wq', l.wq),
    wk: m('wk', l.wk),
    wv: m('wv', l.wv),
    wo: m('wo', l.wo),
    ffnNorm: l.ffnNorm,
    w1: m('w1', l.w1),
    w2: m('w2', l.w2),
    w3: m('w3', l.w3),
    ...(l.bq && l.bk && l.bv ? { bq: l.bq, bk: l.bk, bv: l.bv } : {}),
  }));
  const classifier = a.classifier === a.tokenEmbedding ? tokenEmbedding : m('classifier', a.classifier);
  return { tokenEmbedding, layers, finalNorm: a.finalNorm, classifier };
}

/** Every matrix of the model with its HF-style role, each object once (a tied classifier is skipped). */
export function modelMatrices(w: LlamaWeights): { name: string; matrix: Matrix }[] {
  const out = [{ name: 'tokenEmbedding', matrix: w.tokenEmbedding }];
  w.layers.forEach((layer, l) => {
    for (const key of MATRIX_KEYS) out.push({ name: `l${l}.${key}`, matrix: layer[key] });
  });
  if (w.classifier !== w.tokenEmbedding) out.push({ name: 'classifier', matrix: w.classifier });
  return out;
}

/**
 * The model with every matrix converted to `dtype` (norms stay f32; a matrix whose inputs are no multiple
 * of the block keeps its own dtype). A tied classifier stays tied. `onProgress(done, total)` counts values.
 */
export function convertModel(
  model: LlamaModel,
  dtype: MatrixDtype,
  onProgress?: (done: number, total: number) => void,
): LlamaModel {
  const all = modelMatrices(model.weights);
  const total = all.reduce((n, { matrix }) => n + matrix.rows * matrix.cols, 0);
  let done = 0;
  const conv = (m: Matrix) => {
    const out = convertMatrix(m, dtype);
    done += m.rows * m.cols;
    onProgress?.(done, total);
    return out;
  };
  const w = model.weights;
  const tokenEmbedding = conv(w.tokenEmbedding);
  const layers = w.layers.map((l) => {
    const out = { ...l };
    for (const key of MATRIX_KEYS) out[key] = conv(l[key]);
    return out;
  });
  const classifier = w.classifier === w.tokenEmbedding ? tokenEmbedding : conv(w.classifier);
  return {
    config: { ...model.config },
    weights: { tokenEmbedding, layers, finalNorm: w.finalNorm, classifier },
  };
}

/** The matrices a stage over layers [firstLayer, endLayer) reads (embedding first, classifier last). */
export function stageMatrices(model: LlamaModel, spec: { firstLayer: number; endLayer: number }): Matrix[] {
  const w = model.weights;
  const out: Matrix[] = spec.firstLayer === 0 ? [w.tokenEmbedding] : [];
  for (let l = spec.firstLayer; l < spec.endLayer; l++)
    for (const key of MATRIX_KEYS) out.push(w.layers[l][key]);
  if (spec.endLayer === model.config.nLayers) out.push(w.classifier);
  return out;
}
