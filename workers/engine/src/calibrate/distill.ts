/**
 * Distillation of an affine head through the model's frozen final RMSNorm + classifier:
 *
 *   u = W x + b,  n = g * u / rms(u),  z = C n / tau,  q = softmax(z)
 *   loss = mean_t [ KL(p_t || q_t) + ceWeight * CE(argmax p_t, q_t) ]
 *
 * where p_t = softmax(final logits / tau) is the final layer's next-token distribution. The backward
 * pass is written out by hand:
 *   dz = q - p + ceWeight (q - onehot),  dn = C^T dz / tau,  d = g * dn,
 *   du_j = r d_j - u_j r^3 (sum_i d_i u_i) / dim   (r = 1 / rms(u)),
 *   dW = du x^T,  db = du.
 * Optimised with Adam over shuffled mini-batches and a cosine learning-rate decay. `x` may be any
 * feature vector: the exit head uses h_E; the SPD drafter concatenates its multi-depth features.
 */
import type { LlamaModel } from '../model/llama';
import { denseCached } from '../model/matrix';
import { uniformRng } from '../model/random';
import { argmaxAt, linearRows, softmaxInPlace } from './linalg';
import type { AffineMap } from './lsq';

/** Rows of features and the final layer's distribution they should reproduce. */
export interface DistillSet {
  rows: number;
  inDim: number;
  x: Float32Array; // [rows, inDim]
  /** The final layer's logits for rows [start, start + count) as [count, vocab]. */
  finalLogits: (start: number, count: number) => Float32Array;
}

export interface DistillOptions {
  epochs?: number;
  batch?: number;
  lr?: number;
  /** Weight of the hard-label cross-entropy on the final argmax (top-1 agreement is what acceptance counts). */
  ceWeight?: number;
  /** Softmax temperature applied to both distributions (1 = plain KL). */
  temperature?: number;
  seed?: number;
  /** Called after every epoch with the mean training loss; return false to stop early. */
  onEpoch?: (epoch: number, loss: number, head: AffineMap) => boolean | undefined;
  /** Called after every mini-batch (progress). */
  onBatch?: (epoch: number, batch: number, batches: number) => void;
}

export interface LossAndGrad {
  loss: number;
  gradWeight: Float64Array; // [dim, inDim]
  gradBias: Float64Array; // [dim]
}

/** Target distributions softmax(logits / tau) [rows, vocab] and their argmax. */
export function targetDistribution(
  logits: Float32Array,
  rows: number,
  vocab: number,
  tau = 1,
): { probs: Float32Array; hard: Int32Array } {
  const probs = new Float32Array(rows * vocab);
  const hard = new Int32Array(rows);
  const row = new Float64Array(vocab);
  for (let t = 0; t < rows; t++) {
    for (let v = 0; v < vocab; v++) row[v] = logits[t * vocab + v] / tau;
    hard[t] = argmaxAt(row, 0, vocab);
    softmaxInPlace(row, 0, vocab);
    probs.set(row, t * vocab);
  }
  return { probs, hard };
}

/**
 * Mean loss over `rows` rows and its gradient, added into `out` (fresh zeroed arrays when omitted).
 * x [rows, inDim]; probs [rows, vocab] and hard [rows] from `targetDistribution` at the same tau.
 */
export function distillLossAndGrad(
  model: LlamaModel,
  head: AffineMap,
  x: Float32Array,
  inDim: number,
  probs: Float32Array,
  hard: Int32Array,
  rows: number,
  opts: { ceWeight?: number; temperature?: number } = {},
  out?: LossAndGrad,
): LossAndGrad {
  const c = model.config;
  const dim = c.dim;
  const V = c.vocabSize;
  const g = model.weights.finalNorm;
  const C = denseCached(model.weights.classifier);
  const ce = opts.ceWeight ?? 0;
  const tau = opts.temperature ?? 1;
  const res: LossAndGrad = out ?? {
    loss: 0,
    gradWeight: new Float64Array(dim * inDim),
    gradBias: new Float64Array(dim),
  };
  const u = new Float32Array(rows * dim);
  linearRows(x, rows, inDim, head.weight, dim, u, head.bias);
  const n = new Float32Array(dim);
  const z = new Float64Array(V);
  const dn = new Float64Array(dim);
  const du = new Float64Array(dim);
  const d4 = dim & ~3;
  let loss = 0;
  for (let t = 0; t < rows; t++) {
    const uo = t * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += u[uo + i] * u[uo + i];
    const r = 1 / Math.sqrt(ss / dim + c.normEps);
    for (let i = 0; i < dim; i++) n[i] = u[uo + i] * r * g[i];
    // q = softmax(C n / tau)
    let max = Number.NEGATIVE_INFINITY;
    for (let v = 0; v < V; v++) {
      const co = v * dim;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let i = 0;
      for (; i < d4; i += 4) {
        s0 += n[i] * C[co + i];
        s1 += n[i + 1] * C[co + i + 1];
        s2 += n[i + 2] * C[co + i + 2];
        s3 += n[i + 3] * C[co + i + 3];
      }
      for (; i < dim; i++) s0 += n[i] * C[co + i];
      const zv = (s0 + s1 + s2 + s3) / tau;
      z[v] = zv;
      if (zv > max) max = zv;
    }
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(z[v] - max);
    const lse = max + Math.log(sum);
    // loss: KL(p || q) = sum p (log p - log q), plus the hard-label term; dz = (1+ce) q - p - ce onehot
    const po = t * V;
    const h = hard[t];
    let kl = 0;
    dn.fill(0);
    const scale = 1 / (tau * rows);
    for (let v = 0; v < V; v++) {
      const logq = z[v] - lse;
      const pv = probs[po + v];
      if (pv > 0) kl += pv * (Math.log(pv) - logq);
      let dz = (1 + ce) * Math.exp(logq) - pv;
      if (v === h) dz -= ce;
      dz *= scale;
      const co = v * dim;
      for (let i = 0; i < dim; i++) dn[i] += dz * C[co + i];
    }
    loss += kl + (ce > 0 ? -ce * (z[h] - lse) : 0);
    // back through the RMSNorm
    let s = 0;
    for (let i = 0; i < dim; i++) {
      dn[i] *= g[i];
      s += dn[i] * u[uo + i];
    }
    const r3 = (r * r * r * s) / dim;
    for (let i = 0; i < dim; i++) du[i] = r * dn[i] - u[uo + i] * r3;
    const xo = t * inDim;
    for (let o = 0; o < dim; o++) {
      const d = du[o];
      res.gradBias[o] += d;
      const wo = o * inDim;
      for (let i = 0; i < inDim; i++) res.gradWeight[wo + i] += d * x[xo + i];
    }
  }
  res.loss += loss / rows;
  return res;
}

/** Fine-tunes `init` (typically the least-squares map) by distillation; returns the trained map. */
export function distillAffine(
  model: LlamaModel,
  init: AffineMap,
  set: DistillSet,
  opts: DistillOptions = {},
): AffineMap {
  const dim = model.config.dim;
  const V = model.config.vocabSize;
  const { inDim, rows } = set;
  const epochs = opts.epochs ?? 4;
  const batch = opts.batch ?? 256;
  const lr = opts.lr ?? 2e-3;
  const tau = opts.temperature ?? 1;
  const rand = uniformRng(opts.seed ?? 1234);
  const head: AffineMap = { weight: Float32Array.from(init.weight), bias: Float32Array.from(init.bias) };
  const params = [head.weight, head.bias];
  const m = params.map((p) => new Float64Array(p.length));
  const v = params.map((p) => new Float64Array(p.length));
  const b1 = 0.9;
  const b2 = 0.999;
  let step = 0;
  const nBatches = Math.ceil(rows / batch);
  // Targets are computed once when they fit in memory (~256 MB), else per batch.
  const cached =
    rows * V <= 64 * 1024 * 1024 ? targetDistribution(set.finalLogits(0, rows), rows, V, tau) : undefined;
  const targets = (start: number, count: number) =>
    cached
      ? {
          probs: cached.probs.subarray(start * V, (start + count) * V),
          hard: cached.hard.subarray(start, start + count),
        }
      : targetDistribution(set.finalLogits(start, count), count, V, tau);
  const order = Array.from({ length: nBatches }, (_, i) => i);
  const grad: LossAndGrad = {
    loss: 0,
    gradWeight: new Float64Array(dim * inDim),
    gradBias: new Float64Array(dim),
  };
  for (let epoch = 1; epoch <= epochs; epoch++) {
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    let total = 0;
    const lrEpoch = lr * (0.55 + 0.45 * Math.cos((Math.PI * (epoch - 1)) / epochs));
    let done = 0;
    for (const bi of order) {
      const start = bi * batch;
      const count = Math.min(batch, rows - start);
      grad.loss = 0;
      grad.gradWeight.fill(0);
      grad.gradBias.fill(0);
      const tg = targets(start, count);
      const xs = set.x.subarray(start * inDim, (start + count) * inDim);
      distillLossAndGrad(model, head, xs, inDim, tg.probs, tg.hard, count, opts, grad);
      total += grad.loss * count;
      step++;
      const grads = [grad.gradWeight, grad.gradBias];
      const c1 = 1 - b1 ** step;
      const c2 = 1 - b2 ** step;
      for (let k = 0; k < params.length; k++) {
        const p = params[k];
        const gk = grads[k];
        const mk = m[k];
        const vk = v[k];
        for (let i = 0; i < p.length; i++) {
          mk[i] = b1 * mk[i] + (1 - b1) * gk[i];
          vk[i] = b2 * vk[i] + (1 - b2) * gk[i] * gk[i];
          p[i] -= (lrEpoch * (mk[i] / c1)) / (Math.sqrt(vk[i] / c2) + 1e-8);
        }
      }
      opts.onBatch?.(epoch, ++done, nBatches);
    }
    if (opts.onEpoch?.(epoch, total / rows, head) === false) break;
  }
  return head;
}
