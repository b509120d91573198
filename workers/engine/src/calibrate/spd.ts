/**
 * Fitting SPD's multi-depth feature drafter (decode/spd-drafter.ts) on calibration rows.
 *
 * For the row of token x_t the features are emb(x_t) and, for each depth b_j of the plan (j = 1..k),
 * the hidden state after b_j layers of the token j positions back (zeros before the sequence start);
 * the target is the final layer's distribution at x_t (the model's next token x_{t+1}). The map
 * h = bias + W_emb emb + sum_j W_j f_j is fitted by least squares onto the final hidden state h_N of x_t,
 * then distilled through the final norm + classifier like the exit heads.
 */
import type { SpdDrafterWeights } from '../decode/spd-drafter';
import type { LlamaModel } from '../model/llama';
import type { HiddenDataset } from './data';
import { type DistillOptions, distillAffine } from './distill';
import { headLogits } from './forward';
import { type AffineMap, LeastSquares } from './lsq';

/** Feature rows [rows, (1 + depths.length) * dim]: emb, then one block per depth (lag j = lags[i]). */
export function spdFeatures(data: HiddenDataset, depths: number[], lags: number[]): Float32Array {
  const { rows, dim } = data;
  const width = (1 + depths.length) * dim;
  const x = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    x.set(data.hidden[0].subarray(r * dim, (r + 1) * dim), o);
    depths.forEach((d, i) => {
      const j = lags[i];
      if (data.pos[r] < j) return; // before the sequence start: zeros
      const src = r - j;
      x.set(data.hidden[d].subarray(src * dim, (src + 1) * dim), o + (1 + i) * dim);
    });
  }
  return x;
}

/** Splits a fitted [dim, (1 + n) dim] map into the drafter's blocks. */
export function toSpdWeights(map: AffineMap, depths: number[], dim: number): SpdDrafterWeights {
  const width = (1 + depths.length) * dim;
  const block = (b: number) => {
    const out = new Float32Array(dim * dim);
    for (let o = 0; o < dim; o++)
      out.set(map.weight.subarray(o * width + b * dim, o * width + (b + 1) * dim), o * dim);
    return out;
  };
  return {
    depths: [...depths],
    emb: block(0),
    byDepth: depths.map((_, i) => block(i + 1)),
    bias: Float32Array.from(map.bias),
  };
}

export interface SpdFit {
  lsq: AffineMap;
  distilled?: AffineMap;
  width: number;
}

export function fitSpdMap(
  model: LlamaModel,
  fit: HiddenDataset,
  depths: number[],
  lags: number[],
  opts: { lambda?: number; distill?: DistillOptions | false } = {},
): SpdFit {
  const dim = model.config.dim;
  const N = model.config.nLayers;
  const width = (1 + depths.length) * dim;
  const x = spdFeatures(fit, depths, lags);
  const ls = new LeastSquares(width, dim);
  ls.add(x, fit.hidden[N], fit.rows);
  const lsq = ls.solve(opts.lambda ?? 1e-4);
  if (opts.distill === false) return { lsq, width };
  const finalH = fit.hidden[N];
  const distilled = distillAffine(
    model,
    lsq,
    {
      rows: fit.rows,
      inDim: width,
      x,
      finalLogits: (s, c) => headLogits(model, finalH.subarray(s * dim, (s + c) * dim), c),
    },
    opts.distill,
  );
  return { lsq, distilled, width };
}
