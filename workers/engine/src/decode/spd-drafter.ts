/**
 * SPD's drafter (speculative pipeline decoding, Yu et al.): a module that predicts the next token from
 * aggregated multi-depth features of the pipeline, computed on the main thread while the stages run.
 *
 * Features, for the newest token x_t (the one entering stage 1 this tick) and a k-stage plan with layer
 * boundaries b_0 = 0 < b_1 = E < ... < b_k = N:
 *   - emb(x_t), the token embedding row of x_t;
 *   - for each depth d = b_j in `depths` (1 <= j <= k): the hidden state after d layers (the raw residual
 *     stream, before any norm) of the token j positions back, x_{t-j}. For j < k that is exactly where
 *     the in-flight token x_{t-j} stands at the tick start; for d = N (j = k) it is the cached final-layer
 *     hidden state of the newest finished token. Positions before the sequence start give zeros.
 * drafted hidden h = bias + W_emb emb(x_t) + sum_d W_d feature_d, and the draft logits for x_{t+1} are the
 * model's own head on it: classifier(rmsnorm(h) * finalNorm).
 *
 * The package stores fitted weights as `spd-drafter.safetensors` (tensors `emb` [dim, dim],
 * `depth.<d>` [dim, dim] each, `bias` [dim]; W row-major [out, in], y = W x), with the manifest entry
 * `drafters.spd = { file, depths, stages, exitLayer }`. Without one, `identitySpdDrafter` (W_emb = 0,
 * W = I on the deepest in-flight depth) still drafts losslessly, with low acceptance.
 */
import type { InferenceSession } from 'onnxruntime-node';
import { Tensor as OrtTensor } from 'onnxruntime-node';
import { readSafetensors, type Tensor, writeSafetensors } from '../formats/safetensors';
import { GraphBuilder } from '../graph/onnx';
import { embedRows, matmulWeight } from '../graph/weights';
import type { LlamaModel } from '../model/llama';
import { createSession } from '../runtime';

export interface SpdDrafterWeights {
  /** Layer depths of the features, ascending; each must be a stage boundary b_j (j >= 1) of the plan. */
  depths: number[];
  emb: Float32Array; // [dim, dim]
  byDepth: Float32Array[]; // [dim, dim] per depth, in `depths` order
  bias: Float32Array; // [dim]
}

/** The default drafter: drafted hidden = the deepest in-flight feature, unchanged. */
export function identitySpdDrafter(dim: number, depth: number): SpdDrafterWeights {
  const eye = new Float32Array(dim * dim);
  for (let i = 0; i < dim; i++) eye[i * dim + i] = 1;
  return { depths: [depth], emb: new Float32Array(dim * dim), byDepth: [eye], bias: new Float32Array(dim) };
}

export function validateSpdDrafter(w: SpdDrafterWeights, dim: number): void {
  const square = dim * dim;
  if (w.emb.length !== square)
    throw new Error(`spd drafter: emb has ${w.emb.length} values, expected [${dim}, ${dim}]`);
  if (w.bias.length !== dim)
    throw new Error(`spd drafter: bias has ${w.bias.length} values, expected [${dim}]`);
  if (w.byDepth.length !== w.depths.length || w.depths.length === 0) {
    throw new Error('spd drafter: needs one [dim, dim] matrix per depth, and at least one depth');
  }
  w.depths.forEach((d, i) => {
    if (!Number.isInteger(d) || d < 1 || (i > 0 && d <= w.depths[i - 1])) {
      throw new Error(`spd drafter: depths must be ascending positive integers, got [${w.depths}]`);
    }
    if (w.byDepth[i].length !== square) throw new Error(`spd drafter: depth.${d} is not [${dim}, ${dim}]`);
  });
}

/** How many positions back each depth's feature comes from: depth b_j -> j (throws if not a boundary). */
export function spdFeatureLags(depths: number[], boundaries: number[]): number[] {
  return depths.map((d) => {
    const j = boundaries.indexOf(d);
    if (j < 1) {
      throw new Error(
        `spd drafter: feature depth ${d} is not a stage boundary of this plan (boundaries ${boundaries.join(', ')}); ` +
          'fit the drafter for the same stages and exit layer (ppsd calibrate --drafter spd)',
      );
    }
    return j;
  });
}

export async function saveSpdDrafter(
  path: string,
  w: SpdDrafterWeights,
): Promise<{ bytes: number; sha256: string }> {
  const dim = w.bias.length;
  validateSpdDrafter(w, dim);
  const tensors: [string, Tensor][] = [['emb', { shape: [dim, dim], data: w.emb }]];
  w.depths.forEach((d, i) => {
    tensors.push([`depth.${d}`, { shape: [dim, dim], data: w.byDepth[i] }]);
  });
  tensors.push(['bias', { shape: [dim], data: w.bias }]);
  return writeSafetensors(path, tensors, {
    metadata: { format: 'ppsd-spd-drafter', depths: w.depths.join(',') },
  });
}

export async function loadSpdDrafter(path: string): Promise<SpdDrafterWeights> {
  const { tensors } = await readSafetensors(path);
  const need = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${path}: spd drafter has no tensor '${name}'`);
    return t.data;
  };
  const depths = [...tensors.keys()]
    .map((n) => /^depth\.(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  const w: SpdDrafterWeights = {
    depths,
    emb: need('emb'),
    byDepth: depths.map((d) => need(`depth.${d}`)),
    bias: need('bias'),
  };
  validateSpdDrafter(w, w.bias.length);
  return w;
}

/**
 * The drafted hidden state in plain TypeScript (float64 accumulation), for calibration and tests:
 * `features` holds one [dim] row per depth, in `depths` order.
 */
export function spdDraftHidden(
  w: SpdDrafterWeights,
  emb: ArrayLike<number>,
  features: ArrayLike<number>[],
): Float64Array {
  const dim = w.bias.length;
  const h = Float64Array.from(w.bias);
  const addMatVec = (W: Float32Array, x: ArrayLike<number>) => {
    for (let i = 0; i < dim; i++) {
      let s = 0;
      const r = i * dim;
      for (let j = 0; j < dim; j++) s += W[r + j] * x[j];
      h[i] += s;
    }
  };
  addMatVec(w.emb, emb);
  features.forEach((f, i) => {
    addMatVec(w.byDepth[i], f);
  });
  return h;
}

/**
 * The drafter as one small ONNX graph: inputs `token` int64 [1] and `features` float [nDepths, dim],
 * output `logits` [1, vocab]. The matrices are concatenated into one [dim, (1 + nDepths) dim] Gemm.
 */
export function buildSpdDrafterGraph(model: LlamaModel, w: SpdDrafterWeights): Uint8Array {
  const { dim, vocabSize, normEps } = model.config;
  validateSpdDrafter(w, dim);
  const n = w.depths.length;
  const width = (1 + n) * dim;
  const all = new Float32Array(dim * width);
  const blocks = [w.emb, ...w.byDepth];
  for (let i = 0; i < dim; i++) {
    blocks.forEach((W, b) => {
      all.set(W.subarray(i * dim, (i + 1) * dim), i * width + b * dim);
    });
  }
  const g = new GraphBuilder('spd_drafter');
  const token = g.input('token', 'int64', [1]);
  const features = g.input('features', 'float32', [n, dim]);
  const emb = embedRows(g, model.weights.tokenEmbedding, token, 'tokenEmbedding'); // [1, dim]
  const x = g.concat([emb, g.reshape(features, [1, n * dim])], 1); // [1, width]
  const h = g.linear(
    x,
    g.weight('drafter.weight', all, [dim, width]),
    g.weight('drafter.bias', w.bias, [dim]),
  );
  const ms = g.reduceMean(g.pow(h, g.f32(2)), [-1]);
  const normed = g.mul(
    g.div(h, g.sqrt(g.add(ms, g.f32(normEps)))),
    g.weight('finalNorm', model.weights.finalNorm, [dim]),
  );
  const logits = matmulWeight(g, normed, model.weights.classifier, 'classifier');
  g.output('logits', logits, 'float32', [1, vocabSize]);
  return g.toBytes();
}

/** The drafter's ORT session (one intra-op thread: it shares the controller's core). */
export class SpdDrafterSession {
  private constructor(
    private readonly session: InferenceSession,
    readonly depths: number[],
    private readonly dim: number,
  ) {}

  static async create(model: LlamaModel, w: SpdDrafterWeights): Promise<SpdDrafterSession> {
    const { session } = await createSession(buildSpdDrafterGraph(model, w), { device: 'cpu', threads: 1 });
    return new SpdDrafterSession(session, w.depths, model.config.dim);
  }

  /** Draft logits [vocab] for the token after `token`, from `features` [nDepths * dim]. */
  async logits(token: number, features: Float32Array): Promise<Float32Array> {
    const res = await this.session.run({
      token: new OrtTensor('int64', BigInt64Array.of(BigInt(token)), [1]),
      features: new OrtTensor('float32', features, [this.depths.length, this.dim]),
    });
    return res.logits.data as Float32Array;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
