/**
 * The speculative-sampling rule every speculative decoder uses to judge a drafted token, so that all of
 * them are lossless in the same way:
 * - greedy: the draft is accepted iff it is the target's argmax; otherwise the argmax replaces it;
 * - sampling: a draft x drawn from q is accepted with probability min(1, p(x) / q(x)); on rejection the
 *   replacement is drawn from normalise(max(0, p - q)). Then the emitted token is distributed exactly as p
 *   (Leviathan et al. 2023, Chen et al. 2023).
 * After a fully accepted block the bonus token is a plain draw from p (`sampler.pick`). p and the
 * greedy argmax are of the processed target row (logit_bias, penalties: `Sampler.process`), and every
 * judged token is recorded, so the next row is processed with the completion up to its position.
 */
import type { ControlledAcceptance } from './decoder';
import { Rng, type Sampler } from './sampling';

export type { ControlledAcceptance } from './decoder';

/** A drafted token and the distribution it was drawn from. */
export interface Draft {
  token: number;
  /**
   * The draft distribution q (from `sampler.distribution`). Absent when the draft is deterministic
   * (greedy decoding, or a token forced by controlled acceptance): q is then the one-hot of `token`,
   * which keeps the rule exact under sampling too.
   */
  q?: Float64Array;
}

export interface Verdict {
  accepted: boolean;
  /** The token to emit: the draft when accepted, otherwise its replacement. */
  token: number;
}

/** Drafts one token from draft logits: argmax when greedy, else a draw from q = distribution(logits). */
export function draftFrom(sampler: Sampler, logits: ArrayLike<number>): Draft {
  if (sampler.greedy) return { token: sampler.best(logits) };
  const q = sampler.distribution(logits);
  return { token: sampler.draw(q), q };
}

/** Judges `draft` against the target logits of the same position; the emitted token is recorded. */
export function judge(sampler: Sampler, targetLogits: ArrayLike<number>, draft: Draft): Verdict {
  let verdict: Verdict;
  if (sampler.greedy) {
    const best = sampler.best(targetLogits);
    verdict = { accepted: best === draft.token, token: best };
  } else verdict = judgeDistributions(sampler, sampler.distribution(targetLogits), draft);
  sampler.record(targetLogits, verdict.token);
  return verdict;
}

/** The rule on explicit distributions: p the target's, q the draft's (one-hot of draft.token when absent). */
export function judgeDistributions(sampler: Sampler, p: Float64Array, draft: Draft): Verdict {
  const x = draft.token;
  const qx = draft.q ? draft.q[x] : 1;
  // qx > 0 always holds for a token drawn from q; guard anyway so a bad q cannot divide by zero.
  const ratio = qx > 0 ? p[x] / qx : 1;
  if (ratio >= 1 || sampler.random() < ratio) return { accepted: true, token: x };
  return { accepted: false, token: sampler.draw(residual(p, draft)) };
}

/**
 * normalise(max(0, p - q)). Its mass is zero only when p == q, where rejection has probability zero;
 * rounding can still get there, and p itself is then the right distribution.
 */
export function residual(p: Float64Array, draft: Draft): Float64Array {
  const r = new Float64Array(p.length);
  let sum = 0;
  if (draft.q) {
    const q = draft.q;
    for (let i = 0; i < p.length; i++) {
      const d = p[i] - q[i];
      if (d > 0) {
        r[i] = d;
        sum += d;
      }
    }
  } else {
    r.set(p);
    r[draft.token] = 0;
    sum = 1 - p[draft.token];
  }
  if (!(sum > 1e-12)) return p;
  for (let i = 0; i < r.length; i++) r[i] /= sum;
  return r;
}

/** Per-generation state of controlled acceptance (its own RNG, so the sampler's stream is untouched). */
export class ControlledDrafts {
  private readonly rng: Rng;
  constructor(
    private readonly opts: ControlledAcceptance,
    private readonly promptLength: number,
    private readonly vocabSize: number,
  ) {
    if (!(opts.alpha >= 0 && opts.alpha <= 1))
      throw new RangeError('controlled acceptance alpha must be in [0, 1]');
    this.rng = new Rng(opts.seed);
  }

  /** Replaces the drafter's token for sequence position `pos`; positions beyond the AR run keep the draft. */
  apply(pos: number, draft: Draft): Draft {
    const ar = this.opts.arTokens[pos - this.promptLength];
    if (ar === undefined) return draft;
    if (this.rng.next() < this.opts.alpha) return { token: ar };
    const wrong = (ar + 1 + Math.floor(this.rng.next() * (this.vocabSize - 1))) % this.vocabSize;
    return { token: wrong };
  }
}
