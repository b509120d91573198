/**
 * Agreement of an exit head with the final layer: the fraction of rows where the head's argmax equals
 * the final layer's argmax (the greedy acceptance rate of a drafter that uses the head).
 */
import type { LlamaModel } from '../model/llama';
import { type HiddenDataset, ROW_GREEDY, rowMask } from './data';
import { headLogits } from './forward';
import { argmaxAt } from './linalg';
import type { AffineMap } from './lsq';

export interface Agreement {
  agree: number;
  total: number;
  rate: number;
}

/**
 * Agreement of `head` applied to feature rows x [rows, inDim] (through final norm + classifier) with
 * `target`, counting only rows where `use` is set (all rows when omitted).
 */
export function featureAgreement(
  model: LlamaModel,
  x: Float32Array,
  inDim: number,
  target: Int32Array,
  head: AffineMap | undefined,
  use?: Uint8Array,
): Agreement {
  const { dim, vocabSize } = model.config;
  if (!head && inDim !== dim) throw new Error('a head without an affine map needs dim-wide features');
  const rows = target.length;
  const batch = 512;
  let agree = 0;
  let total = 0;
  for (let start = 0; start < rows; start += batch) {
    const count = Math.min(batch, rows - start);
    let h = x.subarray(start * inDim, (start + count) * inDim);
    if (head && inDim !== dim) {
      // project wide features first, then the head (norm + classifier) without an affine map
      const u = new Float32Array(count * dim);
      for (let t = 0; t < count; t++) {
        for (let o = 0; o < dim; o++) {
          let s = head.bias[o];
          const wo = o * inDim;
          const xo = t * inDim;
          for (let i = 0; i < inDim; i++) s += head.weight[wo + i] * h[xo + i];
          u[t * dim + o] = s;
        }
      }
      h = u;
    }
    const logits = headLogits(model, h, count, inDim === dim ? head : undefined);
    for (let t = 0; t < count; t++) {
      const r = start + t;
      if (use && !use[r]) continue;
      total++;
      if (argmaxAt(logits, t * vocabSize, vocabSize) === target[r]) agree++;
    }
  }
  return { agree, total, rate: total === 0 ? 0 : agree / total };
}

/** Agreement of an exit head after `layer` layers (logit lens when `head` is undefined). */
export function exitAgreement(
  model: LlamaModel,
  data: HiddenDataset,
  layer: number,
  head: AffineMap | undefined,
  use: Uint8Array = rowMask(data, ROW_GREEDY),
): Agreement {
  return featureAgreement(model, data.hidden[layer], data.dim, data.target, head, use);
}
