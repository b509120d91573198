/** The speculative-sampling rule: exact math on hand-made distributions, and p reproduced statistically. */
import { describe, expect, it } from 'vitest';
import { Sampler } from '../../workers/engine/src/decode/sampling';
import {
  ControlledDrafts,
  draftFrom,
  judge,
  judgeDistributions,
  residual,
} from '../../workers/engine/src/decode/spec-rule';

/** A sampler whose uniforms come from a script (then from its seeded stream). */
class ScriptedSampler extends Sampler {
  constructor(private readonly script: number[]) {
    super({ temperature: 1, topP: 1, seed: 1 });
  }
  override random(): number {
    return this.script.length ? this.script.shift()! : super.random();
  }
}

const p = Float64Array.of(0.5, 0.3, 0.2, 0);
const q = Float64Array.of(0.2, 0.5, 0.1, 0.2);

describe('spec rule, exact', () => {
  it('greedy accepts exactly the target argmax and otherwise replaces the draft by it', () => {
    const s = new Sampler({ temperature: 0, topP: 1, seed: 0 });
    const logits = Float32Array.of(0.1, 2, 0.3);
    expect(judge(s, logits, { token: 1 })).toEqual({ accepted: true, token: 1 });
    expect(judge(s, logits, { token: 2 })).toEqual({ accepted: false, token: 1 });
    expect(draftFrom(s, logits)).toEqual({ token: 1 });
  });

  it('accepts with probability min(1, p/q): p(x) >= q(x) always accepts without drawing', () => {
    const s = new ScriptedSampler([0.999999]);
    expect(judgeDistributions(s, p, { token: 0, q })).toEqual({ accepted: true, token: 0 });
    expect(judgeDistributions(s, p, { token: 2, q })).toEqual({ accepted: true, token: 2 });
  });

  it('p(x) < q(x): accepts iff u < p/q (here 0.3 / 0.5 = 0.6)', () => {
    expect(judgeDistributions(new ScriptedSampler([0.59]), p, { token: 1, q }).accepted).toBe(true);
    expect(judgeDistributions(new ScriptedSampler([0.61, 0.0]), p, { token: 1, q }).accepted).toBe(false);
  });

  it('residual is normalise(max(0, p - q))', () => {
    // p - q = [0.3, -0.2, 0.1, -0.2] -> [0.3, 0, 0.1, 0] / 0.4
    const r = residual(p, { token: 1, q });
    expect(Array.from(r).map((v) => +v.toFixed(12))).toEqual([0.75, 0, 0.25, 0]);
    // the replacement is drawn from it: u = 0.8 falls in the second nonzero bin (token 2)
    expect(judgeDistributions(new ScriptedSampler([0.9, 0.8]), p, { token: 1, q })).toEqual({
      accepted: false,
      token: 2,
    });
  });

  it('a deterministic draft (no q) is the one-hot case: accept w.p. p(x), else draw from p without x', () => {
    const r = residual(p, { token: 0 });
    expect(Array.from(r).map((v) => +v.toFixed(12))).toEqual([0, 0.6, 0.4, 0]);
    expect(judgeDistributions(new ScriptedSampler([0.49]), p, { token: 0 }).accepted).toBe(true);
    expect(judgeDistributions(new ScriptedSampler([0.51, 0.1]), p, { token: 0 })).toEqual({
      accepted: false,
      token: 1,
    });
  });

  it('p == q leaves no residual mass; p itself is used (rejection cannot happen then anyway)', () => {
    expect(residual(p, { token: 0, q: p })).toBe(p);
  });
});

describe('spec rule, statistics', () => {
  /** Total variation distance. */
  const tv = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    let d = 0;
    for (let i = 0; i < a.length; i++) d += Math.abs(a[i] - b[i]);
    return d / 2;
  };

  it.each([
    ['q differs from p', q],
    ['q with support p lacks', Float64Array.of(0.1, 0.1, 0.1, 0.7)],
    ['q = p', p],
  ])('draft ~ q, then accept/resample: the emitted token is distributed as p (%s)', (_n, qq) => {
    const s = new Sampler({ temperature: 1, topP: 1, seed: 42 });
    const n = 200_000;
    const counts = new Float64Array(4);
    let accepted = 0;
    for (let i = 0; i < n; i++) {
      const x = s.draw(qq);
      const v = judgeDistributions(s, p, { token: x, q: qq });
      counts[v.token]++;
      if (v.accepted) accepted++;
    }
    for (let i = 0; i < 4; i++) counts[i] /= n;
    // TV of 200k draws over 4 tokens is ~0.002 typically; 0.01 is a wide, deterministic (seeded) margin.
    expect(tv(counts, p)).toBeLessThan(0.01);
    // and the acceptance rate is sum_x min(p, q) (the overlap of p and q)
    const overlap = Array.from(p).reduce((acc, pi, i) => acc + Math.min(pi, qq[i]), 0);
    expect(Math.abs(accepted / n - overlap)).toBeLessThan(0.01);
  });

  it('controlled acceptance replaces drafts by the AR token with probability alpha, else by another token', () => {
    const ar = Array.from({ length: 10_000 }, (_, i) => i % 7);
    const c = new ControlledDrafts({ alpha: 0.3, seed: 5, arTokens: ar }, 4, 7);
    const drafts = ar.map((_, i) => c.apply(4 + i, { token: 0, q: new Float64Array(7) }));
    expect(drafts.every((d) => d.q === undefined && d.token >= 0 && d.token < 7)).toBe(true);
    const hits = drafts.filter((d, i) => d.token === ar[i]).length;
    expect(Math.abs(hits / ar.length - 0.3)).toBeLessThan(0.02);
    // past the AR continuation the drafter's own token stands
    expect(c.apply(4 + ar.length, { token: 3 })).toEqual({ token: 3 });
  });
});
