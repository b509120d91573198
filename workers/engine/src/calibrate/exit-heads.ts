/**
 * Fitting and measuring early-exit heads at every layer: plain logit lens, least-squares affine map
 * h_E -> h_N, and the same map distilled to the final layer's distribution (distill.ts). Agreement is
 * measured on held-out text only.
 */
import { planSpeedup } from '../bench/ideal';
import { stageBoundaries } from '../decode/pipeline';
import type { LlamaModel } from '../model/llama';
import { exitAgreement } from './agreement';
import { type HiddenDataset, ROW_GREEDY, ROW_TEACHER, rowMask } from './data';
import { type DistillOptions, distillAffine } from './distill';
import { headLogits } from './forward';
import { type AffineMap, LeastSquares } from './lsq';

export interface LayerResult {
  layer: number;
  /** Greedy agreement on held-out greedy continuations (the acceptance a drafter sees). */
  lens: number;
  lsq: number;
  distilled?: number;
  /** The same on held-out teacher-forced corpus text. */
  teacher: { lens: number; lsq: number; distilled?: number };
  positions: number;
  teacherPositions: number;
  lsqHead: AffineMap;
  distilledHead?: AffineMap;
}

export interface FitHeadsOptions {
  layers: number[];
  lambda?: number;
  distill?: DistillOptions | false;
  log?: (msg: string) => void;
}

export function fitExitHeads(
  model: LlamaModel,
  fit: HiddenDataset,
  held: HiddenDataset,
  opts: FitHeadsOptions,
): LayerResult[] {
  const { dim, nLayers: N } = model.config;
  const greedyRows = rowMask(held, ROW_GREEDY);
  const teacherRows = rowMask(held, ROW_TEACHER);
  const finalH = fit.hidden[N];
  const out: LayerResult[] = [];
  for (const E of opts.layers) {
    const lens = exitAgreement(model, held, E, undefined, greedyRows);
    const lensT = exitAgreement(model, held, E, undefined, teacherRows);
    const ls = new LeastSquares(dim, dim);
    ls.add(fit.hidden[E], finalH, fit.rows);
    const lsqHead = ls.solve(opts.lambda ?? 1e-4);
    const lsq = exitAgreement(model, held, E, lsqHead, greedyRows);
    const lsqT = exitAgreement(model, held, E, lsqHead, teacherRows);
    opts.log?.(`exit ${E}: logit lens ${lens.rate.toFixed(3)}, least squares ${lsq.rate.toFixed(3)}`);
    const r: LayerResult = {
      layer: E,
      lens: lens.rate,
      lsq: lsq.rate,
      teacher: { lens: lensT.rate, lsq: lsqT.rate },
      positions: lens.total,
      teacherPositions: lensT.total,
      lsqHead,
    };
    if (opts.distill !== false) {
      const d = opts.distill ?? {};
      const distilledHead = distillAffine(
        model,
        lsqHead,
        {
          rows: fit.rows,
          inDim: dim,
          x: fit.hidden[E],
          finalLogits: (s, c) => headLogits(model, finalH.subarray(s * dim, (s + c) * dim), c),
        },
        {
          ...d,
          onEpoch: (epoch, loss, head) => {
            opts.log?.(`exit ${E}: distill epoch ${epoch}/${d.epochs ?? 4} loss ${loss.toFixed(4)}`);
            return d.onEpoch?.(epoch, loss, head);
          },
        },
      );
      r.distilledHead = distilledHead;
      r.distilled = exitAgreement(model, held, E, distilledHead, greedyRows).rate;
      r.teacher.distilled = exitAgreement(model, held, E, distilledHead, teacherRows).rate;
      opts.log?.(`exit ${E}: distilled ${r.distilled.toFixed(3)}`);
    }
    out.push(r);
  }
  return out;
}

/** The best head of a layer result and its acceptance. */
export function bestHead(r: LayerResult): {
  kind: 'affine-lsq' | 'distilled';
  head: AffineMap;
  acceptance: number;
} {
  if (r.distilledHead && r.distilled !== undefined && r.distilled >= r.lsq) {
    return { kind: 'distilled', head: r.distilledHead, acceptance: r.distilled };
  }
  return { kind: 'affine-lsq', head: r.lsqHead, acceptance: r.lsq };
}

/**
 * Expected PPSD speedup of exiting after E with k stages at the head's acceptance: AR costs N
 * layer-times per token on one device, a pipeline tick the deepest stage (stage 1 = [0, E), the rest
 * split evenly): S = N / (deepest * (alpha + (1 - alpha) k)). Undefined when the plan is impossible.
 */
export function expectedSpeedup(nLayers: number, k: number, E: number, alpha: number): number | undefined {
  if (nLayers - E < k - 1 || E < 1) return undefined;
  return planSpeedup(alpha, stageBoundaries(nLayers, k, E));
}

/** Picks E with the best expected speedup (ties: the deeper exit, whose acceptance is higher). */
export function autoExitLayer(results: LayerResult[], nLayers: number, k: number): number {
  let best = results[0].layer;
  let bestS = -1;
  for (const r of results) {
    const s = expectedSpeedup(nLayers, k, r.layer, bestHead(r).acceptance);
    if (s !== undefined && s >= bestS - 1e-12) {
      best = r.layer;
      bestS = s;
    }
  }
  return best;
}
