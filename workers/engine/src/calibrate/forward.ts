/**
 * A float32 forward pass in TypeScript that keeps the residual stream after *every* layer: the data
 * calibration fits exit heads and the SPD drafter on. It computes exactly what the stage graphs compute
 * (same RoPE tables, same layer order; checked against the float64 reference in the tests), processes a
 * block of T rows at once, and keeps a KV cache so greedy continuations can be generated incrementally.
 *
 * It is meant for calibration-sized models (stories260K: dim 64, 5 layers); a 110M model works but is
 * slow in plain JS.
 */
import { ropeTables } from '../graph/rope';
import { headDim, type LlamaModel } from '../model/llama';
import { denseCached, denseRows } from '../model/matrix';
import { linearRows, rmsnormRows } from './linalg';

export interface BlockHiddens {
  rows: number;
  /** hidden[l] = residual stream after l layers ([rows, dim]); hidden[0] is the token embedding. */
  hidden: Float32Array[];
}

export class HiddenStateModel {
  private readonly k: Float32Array[];
  private readonly v: Float32Array[];
  private readonly cos: Float32Array;
  private readonly sin: Float32Array;
  private len = 0;

  constructor(
    readonly model: LlamaModel,
    readonly maxSeq: number = model.config.maxSeqLen,
  ) {
    const c = model.config;
    const kvDim = c.nKvHeads * headDim(c);
    this.k = Array.from({ length: c.nLayers }, () => new Float32Array(maxSeq * kvDim));
    this.v = Array.from({ length: c.nLayers }, () => new Float32Array(maxSeq * kvDim));
    const t = ropeTables(c, maxSeq);
    this.cos = Float32Array.from(t.cos);
    this.sin = Float32Array.from(t.sin);
  }

  get length(): number {
    return this.len;
  }

  truncate(n: number): void {
    if (n < 0 || n > this.len) throw new Error(`truncate(${n}) outside [0, ${this.len}]`);
    this.len = n;
  }

  /** Runs T new tokens (positions length .. length+T-1) through every layer; returns all hiddens. */
  forward(tokens: ArrayLike<number>): BlockHiddens {
    const c = this.model.config;
    const w = this.model.weights;
    const T = tokens.length;
    const { dim, nLayers } = c;
    if (this.len + T > this.maxSeq) throw new Error(`context overflow: ${this.len} + ${T} > ${this.maxSeq}`);
    const hd = headDim(c);
    const nH = c.nHeads;
    const kvDim = c.nKvHeads * hd;
    const grp = nH / c.nKvHeads;
    const half = hd / 2;
    const P = this.len;

    const x = new Float32Array(T * dim);
    for (let t = 0; t < T; t++) {
      const tok = tokens[t];
      if (!(tok >= 0 && tok < c.vocabSize)) throw new Error(`token ${tok} outside vocab`);
      x.set(denseRows(w.tokenEmbedding, tok, tok + 1), t * dim);
    }
    const hidden: Float32Array[] = [x.slice()];
    const xb = new Float32Array(T * dim);
    const q = new Float32Array(T * nH * hd);
    const o = new Float32Array(T * nH * hd);
    const y = new Float32Array(T * dim);
    const h1 = new Float32Array(T * c.hiddenDim);
    const h3 = new Float32Array(T * c.hiddenDim);
    const att = new Float32Array(P + T);
    const scale = 1 / Math.sqrt(hd);

    const rope = (buf: Float32Array, off: number, pos: number, heads: number) => {
      for (let h = 0; h < heads; h++) {
        const b = off + h * hd;
        for (let i = 0; i < half; i++) {
          const co = this.cos[pos * hd + i];
          const si = this.sin[pos * hd + i];
          const x1 = buf[b + i];
          const x2 = buf[b + i + half];
          buf[b + i] = x1 * co - x2 * si;
          buf[b + i + half] = x2 * co + x1 * si;
        }
      }
    };

    for (let l = 0; l < nLayers; l++) {
      const lw = w.layers[l];
      const kc = this.k[l];
      const vc = this.v[l];
      // attention
      rmsnormRows(x, T, dim, lw.attnNorm, c.normEps, xb);
      linearRows(xb, T, dim, denseCached(lw.wq), nH * hd, q, lw.bq);
      linearRows(xb, T, dim, denseCached(lw.wk), kvDim, kc.subarray(P * kvDim, (P + T) * kvDim), lw.bk);
      linearRows(xb, T, dim, denseCached(lw.wv), kvDim, vc.subarray(P * kvDim, (P + T) * kvDim), lw.bv);
      for (let t = 0; t < T; t++) {
        rope(q, t * nH * hd, P + t, nH);
        rope(kc, (P + t) * kvDim, P + t, c.nKvHeads);
      }
      o.fill(0);
      for (let t = 0; t < T; t++) {
        const S = P + t + 1;
        for (let h = 0; h < nH; h++) {
          const qo = t * nH * hd + h * hd;
          const kvo = Math.floor(h / grp) * hd;
          let max = Number.NEGATIVE_INFINITY;
          for (let s = 0; s < S; s++) {
            let d = 0;
            const ko = s * kvDim + kvo;
            for (let i = 0; i < hd; i++) d += q[qo + i] * kc[ko + i];
            d *= scale;
            att[s] = d;
            if (d > max) max = d;
          }
          let sum = 0;
          for (let s = 0; s < S; s++) {
            const e = Math.exp(att[s] - max);
            att[s] = e;
            sum += e;
          }
          const inv = 1 / sum;
          for (let s = 0; s < S; s++) {
            const a = att[s] * inv;
            const vo = s * kvDim + kvo;
            for (let i = 0; i < hd; i++) o[qo + i] += a * vc[vo + i];
          }
        }
      }
      linearRows(o, T, nH * hd, denseCached(lw.wo), dim, y);
      for (let i = 0; i < T * dim; i++) x[i] += y[i];
      // SwiGLU MLP
      rmsnormRows(x, T, dim, lw.ffnNorm, c.normEps, xb);
      linearRows(xb, T, dim, denseCached(lw.w1), c.hiddenDim, h1);
      linearRows(xb, T, dim, denseCached(lw.w3), c.hiddenDim, h3);
      for (let i = 0; i < T * c.hiddenDim; i++) h1[i] = (h1[i] / (1 + Math.exp(-h1[i]))) * h3[i];
      linearRows(h1, T, c.hiddenDim, denseCached(lw.w2), dim, y);
      for (let i = 0; i < T * dim; i++) x[i] += y[i];
      hidden.push(x.slice());
    }
    this.len += T;
    return { rows: T, hidden };
  }
}

/**
 * (Optional affine, then) final norm + classifier for `rows` hidden rows -> logits [rows, vocab].
 * The exit head of the engine contract (`ExitHead`), applied in float32.
 */
export function headLogits(
  model: LlamaModel,
  h: Float32Array,
  rows: number,
  affine?: { weight: Float32Array; bias: Float32Array },
): Float32Array {
  const c = model.config;
  let u: Float32Array = h;
  if (affine) {
    u = new Float32Array(rows * c.dim);
    linearRows(h, rows, c.dim, affine.weight, c.dim, u, affine.bias);
  }
  const n = new Float32Array(rows * c.dim);
  rmsnormRows(u, rows, c.dim, model.weights.finalNorm, c.normEps, n);
  const logits = new Float32Array(rows * c.vocabSize);
  linearRows(n, rows, c.dim, denseCached(model.weights.classifier), c.vocabSize, logits);
  return logits;
}
