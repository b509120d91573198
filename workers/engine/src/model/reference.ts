/**
 * Float64 reference forward pass, llama2.c style: one position at a time, plain loops, no cleverness.
 * Used by tests as the ground truth for the ONNX graphs and as a `Stage` for pure-logic decoder tests.
 * Weights stay float32 (every float32 converts to float64 exactly); quantized and 16-bit matrices are
 * dequantized to the exact values they stand for; all arithmetic is float64.
 */
import { ropeTables } from '../graph/rope';
import { type ExitHead, headDim, type LlamaModel, type SkipSet } from './llama';
import { denseCached, denseRows, type Matrix } from './matrix';
import type { Stage, StageInput, StageOutput, StageSpec } from './stage';

export interface ReferenceOptions {
  exit?: ExitHead;
  skip?: SkipSet;
}

export interface ReferenceResult {
  logits: Float64Array[]; // one [vocab] row per position
  exitLogits?: Float64Array[]; // one [vocab] row per position, with `exit`
  hidden: Float64Array[]; // [dim] per position: after the last layer, before the final norm
  exitHidden?: Float64Array[]; // [dim] per position: after `exit.afterLayer` layers
}

type Weights = ArrayLike<number>;

/** out[i] = sum_j W[i, j] x[j], W row-major [out.length, x.length] (a stored matrix is dequantized). */
function matvec(out: Float64Array, m: Weights | Matrix, x: Float64Array): Float64Array {
  const w = 'dtype' in m ? denseCached(m) : m;
  const n = x.length;
  for (let i = 0; i < out.length; i++) {
    let s = 0;
    const row = i * n;
    for (let j = 0; j < n; j++) s += w[row + j] * x[j];
    out[i] = s;
  }
  return out;
}

function addBias(x: Float64Array, b: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] += b[i];
}

function rmsnorm(x: Float64Array, w: Weights, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * inv * w[i];
  return out;
}

/** The layers [first, end) of a model with a float64 KV cache ([layer][pos * kvDim + ...]). */
class RefLayers {
  private readonly k: Float64Array[] = [];
  private readonly v: Float64Array[] = [];
  private readonly cos: Float64Array;
  private readonly sin: Float64Array;

  constructor(
    private readonly model: LlamaModel,
    private readonly first: number,
    end: number,
    readonly maxSeq: number,
    private readonly skip?: SkipSet,
  ) {
    const c = model.config;
    const kvDim = c.nKvHeads * headDim(c);
    for (let l = first; l < end; l++) {
      this.k.push(new Float64Array(maxSeq * kvDim));
      this.v.push(new Float64Array(maxSeq * kvDim));
    }
    ({ cos: this.cos, sin: this.sin } = ropeTables(c, maxSeq));
  }

  /** HF rotate_half RoPE on every head of `x` (heads * hd values) at position `pos`, in place. */
  private rope(x: Float64Array, pos: number): void {
    const hd = headDim(this.model.config);
    const half = hd / 2;
    for (let h = 0; h < x.length; h += hd) {
      for (let i = 0; i < half; i++) {
        const c = this.cos[pos * hd + i];
        const s = this.sin[pos * hd + i];
        const x1 = x[h + i];
        const x2 = x[h + i + half];
        x[h + i] = x1 * c - x2 * s;
        x[h + i + half] = x2 * c + x1 * s;
      }
    }
  }

  /** Runs layer `l` on the residual stream x [dim] at position `pos` (in place), caching its K/V. */
  layer(l: number, x: Float64Array, pos: number): void {
    const c = this.model.config;
    const w = this.model.weights.layers[l];
    const hd = headDim(c);
    const kvDim = c.nKvHeads * hd;
    const grp = c.nHeads / c.nKvHeads;

    if (!this.skip?.attention.includes(l)) {
      const xb = rmsnorm(x, w.attnNorm, c.normEps);
      const q = matvec(new Float64Array(c.nHeads * hd), w.wq, xb);
      const kc = this.k[l - this.first];
      const vc = this.v[l - this.first];
      const k = kc.subarray(pos * kvDim, (pos + 1) * kvDim);
      const v = vc.subarray(pos * kvDim, (pos + 1) * kvDim);
      matvec(k, w.wk, xb);
      matvec(v, w.wv, xb);
      if (w.bq && w.bk && w.bv) {
        addBias(q, w.bq);
        addBias(k, w.bk);
        addBias(v, w.bv);
      }
      this.rope(q, pos);
      this.rope(k, pos);
      const o = new Float64Array(c.nHeads * hd);
      const att = new Float64Array(pos + 1);
      for (let h = 0; h < c.nHeads; h++) {
        const kvOff = Math.floor(h / grp) * hd;
        let max = -Infinity;
        for (let t = 0; t <= pos; t++) {
          let s = 0;
          for (let i = 0; i < hd; i++) s += q[h * hd + i] * kc[t * kvDim + kvOff + i];
          att[t] = s / Math.sqrt(hd);
          if (att[t] > max) max = att[t];
        }
        let sum = 0;
        for (let t = 0; t <= pos; t++) {
          att[t] = Math.exp(att[t] - max);
          sum += att[t];
        }
        for (let t = 0; t <= pos; t++) {
          const a = att[t] / sum;
          for (let i = 0; i < hd; i++) o[h * hd + i] += a * vc[t * kvDim + kvOff + i];
        }
      }
      const y = matvec(new Float64Array(c.dim), w.wo, o);
      for (let i = 0; i < c.dim; i++) x[i] += y[i];
    }

    if (!this.skip?.mlp.includes(l)) {
      const xb = rmsnorm(x, w.ffnNorm, c.normEps);
      const h1 = matvec(new Float64Array(c.hiddenDim), w.w1, xb);
      const h3 = matvec(new Float64Array(c.hiddenDim), w.w3, xb);
      for (let i = 0; i < c.hiddenDim; i++) h1[i] = (h1[i] / (1 + Math.exp(-h1[i]))) * h3[i];
      const y = matvec(new Float64Array(c.dim), w.w2, h1);
      for (let i = 0; i < c.dim; i++) x[i] += y[i];
    }
  }
}

/** (Optional affine map, then) final RMSNorm and classifier: x [dim] -> logits [vocab]. */
export function referenceHead(model: LlamaModel, x: Float64Array, affine?: ExitHead['affine']): Float64Array {
  const c = model.config;
  let h = x;
  if (affine) {
    h = matvec(new Float64Array(c.dim), affine.weight, x);
    for (let i = 0; i < c.dim; i++) h[i] += affine.bias[i];
  }
  return matvec(
    new Float64Array(c.vocabSize),
    model.weights.classifier,
    rmsnorm(h, model.weights.finalNorm, c.normEps),
  );
}

function embed(model: LlamaModel, token: number): Float64Array {
  const { vocabSize } = model.config;
  if (!Number.isInteger(token) || token < 0 || token >= vocabSize)
    throw new Error(`token ${token} outside vocab`);
  return Float64Array.from(denseRows(model.weights.tokenEmbedding, token, token + 1));
}

/** The whole model over `tokens` from scratch, in float64. */
export function referenceForward(
  model: LlamaModel,
  tokens: number[],
  opts: ReferenceOptions = {},
): ReferenceResult {
  const c = model.config;
  const layers = new RefLayers(model, 0, c.nLayers, Math.max(tokens.length, 1), opts.skip);
  const res: ReferenceResult = { logits: [], hidden: [] };
  if (opts.exit) {
    res.exitLogits = [];
    res.exitHidden = [];
  }
  tokens.forEach((tok, pos) => {
    const x = embed(model, tok);
    for (let l = 0; l <= c.nLayers; l++) {
      if (opts.exit?.afterLayer === l) {
        res.exitHidden!.push(x.slice());
        res.exitLogits!.push(referenceHead(model, x, opts.exit.affine));
      }
      if (l < c.nLayers) layers.layer(l, x, pos);
    }
    res.hidden.push(x);
    res.logits.push(referenceHead(model, x));
  });
  return res;
}

/** A float64 `Stage` (float32 in and out) with the same interface and errors as the ORT stage. */
export function createReferenceStage(
  model: LlamaModel,
  spec: StageSpec,
  opts: { maxSeqLen?: number } = {},
): Stage {
  const c = model.config;
  const { firstLayer, endLayer, exit } = spec;
  if (firstLayer < 0 || endLayer > c.nLayers || firstLayer >= endLayer) {
    throw new Error(`invalid stage layers [${firstLayer}, ${endLayer}) for a ${c.nLayers}-layer model`);
  }
  if (exit && (exit.afterLayer < firstLayer || exit.afterLayer > endLayer)) {
    throw new Error(
      `exit after layer ${exit.afterLayer} lies outside the stage's layers [${firstLayer}, ${endLayer})`,
    );
  }
  const maxSeq = opts.maxSeqLen ?? c.maxSeqLen;
  const layers = new RefLayers(model, firstLayer, endLayer, maxSeq, spec.skip);
  const last = endLayer === c.nLayers;
  let length = 0;

  return {
    spec,
    get length() {
      return length;
    },
    async forward(input: StageInput): Promise<StageOutput> {
      const T = firstLayer === 0 ? (input.tokens?.length ?? 0) : (input.hidden?.length ?? 0) / c.dim;
      if (firstLayer === 0 ? !input.tokens : !input.hidden) {
        throw new Error(
          `stage [${firstLayer}, ${endLayer}) needs ${firstLayer === 0 ? 'tokens' : 'hidden'} input`,
        );
      }
      if (!Number.isInteger(T) || T < 1) throw new Error(`stage forward needs T >= 1 rows, got ${T}`);
      if (length + T > maxSeq) {
        throw new Error(`context overflow: ${length} cached + ${T} new positions > maxSeqLen ${maxSeq}`);
      }
      const R = input.logitRows ?? T;
      if (!Number.isInteger(R) || R < 1 || R > T) throw new Error(`logitRows ${R} must lie in [1, ${T}]`);
      const out: StageOutput = { rows: T };
      const hidden = new Float32Array(T * c.dim);
      const logits = last ? new Float32Array(R * c.vocabSize) : undefined;
      const exitLogits = exit ? new Float32Array(R * c.vocabSize) : undefined;
      const exitHidden = exit ? new Float32Array(T * c.dim) : undefined;
      for (let t = 0; t < T; t++) {
        const x = input.tokens
          ? embed(model, input.tokens[t])
          : Float64Array.from(input.hidden!.subarray(t * c.dim, (t + 1) * c.dim));
        const logitRow = t - (T - R);
        for (let l = firstLayer; l <= endLayer; l++) {
          if (exit?.afterLayer === l) {
            exitHidden!.set(x, t * c.dim);
            if (logitRow >= 0) exitLogits!.set(referenceHead(model, x, exit.affine), logitRow * c.vocabSize);
          }
          if (l < endLayer) layers.layer(l, x, length + t);
        }
        hidden.set(x, t * c.dim);
        if (logits && logitRow >= 0) logits.set(referenceHead(model, x), logitRow * c.vocabSize);
      }
      length += T;
      if (logits) out.logits = logits;
      else out.hidden = hidden;
      if (exit) {
        out.exitLogits = exitLogits;
        out.exitHidden = exitHidden;
      }
      return out;
    },
    truncate(n: number) {
      if (!Number.isInteger(n) || n < 0 || n > length)
        throw new Error(`truncate(${n}) outside [0, ${length}]`);
      length = n;
    },
    async release() {},
  };
}
