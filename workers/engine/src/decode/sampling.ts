/**
 * Token selection for one generation: greedy (temperature 0) or temperature + nucleus (top-p) sampling
 * from a seeded PRNG, so the same seed gives the same text. Speculative decoders use `distribution` for
 * both the target (p) and the draft (q) so the speculative-sampling rule compares like with like.
 *
 * Logit processors (OpenAI's logit_bias, presence_penalty, frequency_penalty) shape the logits before
 * temperature. The penalties depend on the completion so far, so a Sampler keeps the verified tokens'
 * counts: `pick` and the spec rule's `judge` are the only calls that decide a verified token, and each
 * records it (`record`). Decoders judge a verified block's rows in order, so row i is processed with the
 * completion up to its own position, exactly as AR would. The target distribution is therefore AR's,
 * processors included, and speculative sampling stays exact; drafts are processed with the verified
 * history only (any q is exact; this one is merely close).
 */
import { type IdLogprobs, logprobsOf } from './logprobs';

export interface SamplingOptions {
  temperature: number; // 0 = greedy
  topP: number; // 1 = no nucleus cut
  seed: number;
  /** Added to the logits of these token ids (OpenAI logit_bias: -100 bans a token, 100 forces it). */
  logitBias?: ReadonlyMap<number, number>;
  /** Subtracted once from the logit of every token already in the completion. */
  presencePenalty?: number;
  /** Subtracted from a token's logit once per occurrence in the completion so far. */
  frequencyPenalty?: number;
  /** Record each verified token's raw log-probability and this many most probable alternatives. */
  logprobs?: number;
}

/** xoshiro128** seeded through splitmix32: small, fast, and identical on every platform. */
export class Rng {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result / 4294967296;
  }
}

const rotl = (x: number, k: number): number => ((x << k) | (x >>> (32 - k))) >>> 0;

/** Index of the largest value; the first one on ties (as llama2.c's argmax). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  let bestValue = row[0];
  for (let i = 1; i < row.length; i++) {
    if (row[i] > bestValue) {
      bestValue = row[i];
      best = i;
    }
  }
  return best;
}

export class Sampler {
  readonly greedy: boolean;
  /** Per verified token, in order, when `options.logprobs` is set: the raw target log-probabilities. */
  readonly logprobs: IdLogprobs[] = [];
  private readonly rng: Rng;
  /** Occurrences of each token in the verified completion (the penalties' history). */
  private readonly counts = new Map<number, number>();
  private readonly processes: boolean;
  private readonly presence: number;
  private readonly frequency: number;
  private readonly bias: ReadonlyMap<number, number>;

  constructor(readonly options: SamplingOptions) {
    if (!(options.temperature >= 0)) throw new RangeError('temperature must be >= 0');
    if (!(options.topP > 0 && options.topP <= 1)) throw new RangeError('top_p must be in (0, 1]');
    this.greedy = options.temperature === 0;
    this.rng = new Rng(options.seed);
    this.presence = finiteOr0(options.presencePenalty, 'presence penalty');
    this.frequency = finiteOr0(options.frequencyPenalty, 'frequency penalty');
    this.bias = options.logitBias ?? new Map();
    for (const [id, b] of this.bias) {
      if (!Number.isInteger(id) || id < 0) throw new RangeError(`logit bias: bad token id ${id}`);
      finiteOr0(b, `logit bias of token ${id}`);
    }
    this.processes = this.bias.size > 0 || this.presence !== 0 || this.frequency !== 0;
    const n = options.logprobs;
    if (n !== undefined && !(Number.isInteger(n) && n >= 0))
      throw new RangeError(`logprobs must be a non-negative integer, got ${n}`);
  }

  /**
   * The logits after logit_bias and the penalties for the completion so far (the row itself when no
   * processor is set). `ids[i]` is the token of column i, for a draft head over a vocabulary subset.
   */
  process(logits: ArrayLike<number>, ids?: Int32Array): ArrayLike<number> {
    if (!this.processes) return logits;
    const out = Float64Array.from(logits);
    if (ids) {
      for (let i = 0; i < ids.length; i++) out[i] += this.adjustment(ids[i]);
      return out;
    }
    for (const [id, b] of this.bias) if (id < out.length) out[id] += b;
    for (const [id, c] of this.counts) out[id] -= this.presence + c * this.frequency;
    return out;
  }

  /** What the processors add to token `id`'s logit now (OpenAI's formula). */
  private adjustment(id: number): number {
    const c = this.counts.get(id) ?? 0;
    return (this.bias.get(id) ?? 0) - (c > 0 ? this.presence + c * this.frequency : 0);
  }

  /** The greedy choice: the argmax of the processed row (a column index when `ids` is given). */
  best(logits: ArrayLike<number>, ids?: Int32Array): number {
    return argmax(this.process(logits, ids));
  }

  /**
   * A verified token was decided from the target's raw logits row: count it for the penalties and, when
   * asked, keep its raw log-probability and top alternatives.
   */
  record(targetLogits: ArrayLike<number>, token: number): void {
    if (this.processes) this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    if (this.options.logprobs !== undefined)
      this.logprobs.push(logprobsOf(targetLogits, token, this.options.logprobs));
  }

  /** Uniform [0,1) from this generation's stream. */
  random(): number {
    return this.rng.next();
  }

  /**
   * The sampling distribution for one logits row: softmax(process(logits) / T), then the smallest set of
   * most probable tokens whose mass reaches top_p, renormalised. Zero elsewhere.
   */
  distribution(raw: ArrayLike<number>, ids?: Int32Array): Float64Array {
    const logits = this.process(raw, ids);
    const n = logits.length;
    const p = new Float64Array(n);
    if (this.greedy) {
      p[argmax(logits)] = 1;
      return p;
    }
    let max = Number.NEGATIVE_INFINITY;
    for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
    let sum = 0;
    for (let i = 0; i < n; i++) {
      p[i] = Math.exp((logits[i] - max) / this.options.temperature);
      sum += p[i];
    }
    for (let i = 0; i < n; i++) p[i] /= sum;
    if (this.options.topP < 1) nucleus(p, this.options.topP);
    return p;
  }

  /** Draws a token from a distribution (inverse CDF over token ids in order). */
  draw(p: Float64Array): number {
    const r = this.random();
    let cdf = 0;
    let last = 0;
    for (let i = 0; i < p.length; i++) {
      if (p[i] === 0) continue;
      cdf += p[i];
      last = i;
      if (r < cdf) return i;
    }
    return last; // rounding: r beyond the accumulated mass
  }

  /**
   * The next verified token from the target's logits row (argmax when greedy, else a draw from
   * `distribution`), recorded. Only for target rows: drafts go through the spec rule's `draftFrom`.
   */
  pick(logits: ArrayLike<number>): number {
    const token = this.greedy ? this.best(logits) : this.draw(this.distribution(logits));
    this.record(logits, token);
    return token;
  }
}

function finiteOr0(x: number | undefined, what: string): number {
  if (x === undefined) return 0;
  if (!Number.isFinite(x)) throw new RangeError(`${what} must be a finite number, got ${x}`);
  return x;
}

function nucleus(p: Float64Array, topP: number): void {
  const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b);
  let mass = 0;
  let keep = 0;
  while (keep < order.length && mass < topP) mass += p[order[keep++]];
  for (let i = keep; i < order.length; i++) p[order[i]] = 0;
  for (let i = 0; i < keep; i++) p[order[i]] /= mass;
}

/** Logits row `i` of a [rows, vocab] block, without copying. */
export const row = (block: Float32Array, i: number, vocab: number): Float32Array =>
  block.subarray(i * vocab, (i + 1) * vocab);
