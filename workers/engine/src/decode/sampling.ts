/**
 * Token selection: greedy (temperature 0) or temperature + nucleus (top-p) sampling from a seeded PRNG,
 * so the same seed gives the same text. Speculative decoders use `distribution` for both the target (p)
 * and the draft (q) so the speculative-sampling rule compares like with like.
 */
export interface SamplingOptions {
  temperature: number; // 0 = greedy
  topP: number; // 1 = no nucleus cut
  seed: number;
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
  private readonly rng: Rng;
  constructor(readonly options: SamplingOptions) {
    if (!(options.temperature >= 0)) throw new RangeError('temperature must be >= 0');
    if (!(options.topP > 0 && options.topP <= 1)) throw new RangeError('top_p must be in (0, 1]');
    this.greedy = options.temperature === 0;
    this.rng = new Rng(options.seed);
  }

  /** Uniform [0,1) from this generation's stream. */
  random(): number {
    return this.rng.next();
  }

  /**
   * The sampling distribution for one logits row: softmax(logits / T), then the smallest set of most
   * probable tokens whose mass reaches top_p, renormalised. Zero elsewhere.
   */
  distribution(logits: ArrayLike<number>): Float64Array {
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

  /** Next token from one logits row: argmax when greedy, else a draw from `distribution`. */
  pick(logits: ArrayLike<number>): number {
    return this.greedy ? argmax(logits) : this.draw(this.distribution(logits));
  }
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
