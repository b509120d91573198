import { describe, expect, it } from 'vitest';
import { logprobsOf, tokenString } from '../../workers/engine/src/decode/logprobs';
import { argmax, Rng, Sampler } from '../../workers/engine/src/decode/sampling';

describe('Rng', () => {
  it('is deterministic per seed and differs across seeds', () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const c = new Rng(43);
    const xs = Array.from({ length: 5 }, () => a.next());
    expect(Array.from({ length: 5 }, () => b.next())).toEqual(xs);
    expect(Array.from({ length: 5 }, () => c.next())).not.toEqual(xs);
  });

  it('is uniform on [0, 1)', () => {
    const rng = new Rng(1);
    const bins = new Array(10).fill(0);
    const n = 100_000;
    for (let i = 0; i < n; i++) {
      const x = rng.next();
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(1);
      bins[Math.floor(x * 10)]++;
    }
    for (const count of bins) expect(Math.abs(count - n / 10)).toBeLessThan(0.03 * (n / 10));
  });
});

describe('Sampler', () => {
  it('argmax takes the first maximum', () => {
    expect(argmax([1, 3, 3, 2])).toBe(1);
  });

  it('greedy picks the argmax and puts all mass on it', () => {
    const s = new Sampler({ temperature: 0, topP: 1, seed: 0 });
    expect(s.pick(Float32Array.of(0.1, 2, -1))).toBe(1);
    expect(Array.from(s.distribution([0.1, 2, -1]))).toEqual([0, 1, 0]);
  });

  it('temperature softmax matches the closed form', () => {
    const s = new Sampler({ temperature: 2, topP: 1, seed: 0 });
    const p = s.distribution([0, Math.log(4) * 2]);
    expect(p[0]).toBeCloseTo(1 / 5, 12);
    expect(p[1]).toBeCloseTo(4 / 5, 12);
  });

  it('top-p keeps the smallest set reaching the mass and renormalises', () => {
    const s = new Sampler({ temperature: 1, topP: 0.7, seed: 0 });
    const logits = [Math.log(0.5), Math.log(0.3), Math.log(0.2)];
    const p = s.distribution(logits);
    expect(p[0]).toBeCloseTo(0.5 / 0.8, 12);
    expect(p[1]).toBeCloseTo(0.3 / 0.8, 12);
    expect(p[2]).toBe(0);
  });

  it('draws follow the distribution', () => {
    const s = new Sampler({ temperature: 1, topP: 1, seed: 9 });
    const p = Float64Array.of(0.1, 0.6, 0.3);
    const counts = [0, 0, 0];
    const n = 50_000;
    for (let i = 0; i < n; i++) counts[s.draw(p)]++;
    for (const [i, c] of counts.entries()) expect(Math.abs(c / n - p[i])).toBeLessThan(0.01);
  });

  it('rejects invalid settings', () => {
    expect(() => new Sampler({ temperature: -1, topP: 1, seed: 0 })).toThrow(/temperature/);
    expect(() => new Sampler({ temperature: 1, topP: 0, seed: 0 })).toThrow(/top_p/);
  });
});

describe('Sampler logit processors (OpenAI logit_bias, presence_penalty, frequency_penalty)', () => {
  const logits = Float32Array.of(1, 2, 3, 0.5);

  it('add the bias, and subtract presence once plus frequency per occurrence in the completion', () => {
    const s = new Sampler({
      temperature: 1,
      topP: 1,
      seed: 0,
      logitBias: new Map([[0, 5]]),
      presencePenalty: 0.5,
      frequencyPenalty: 0.25,
    });
    expect(Array.from(s.process(logits))).toEqual([6, 2, 3, 0.5]);
    s.record(logits, 2);
    s.record(logits, 2);
    s.record(logits, 1);
    // token 2 twice: 3 - 0.5 - 2 * 0.25; token 1 once: 2 - 0.5 - 0.25
    expect(Array.from(s.process(logits))).toEqual([6, 1.25, 2, 0.5]);
    // a draft head over a subset: column i is token ids[i]
    expect(Array.from(s.process(Float32Array.of(1, 3), Int32Array.of(0, 2)))).toEqual([6, 2]);
    const p = s.distribution(logits);
    const e = [6, 1.25, 2, 0.5].map(Math.exp);
    const z = e.reduce((a, b) => a + b);
    expect(Array.from(p, (x) => x.toFixed(12))).toEqual(e.map((x) => (x / z).toFixed(12)));
  });

  it('greedy picks the processed argmax: -100 bans a token, penalties move the choice', () => {
    const s = new Sampler({ temperature: 0, topP: 1, seed: 0, logitBias: new Map([[2, -100]]) });
    expect(s.pick(logits)).toBe(1);
    const t = new Sampler({ temperature: 0, topP: 1, seed: 0, presencePenalty: 1.5 });
    expect(t.pick(logits)).toBe(2);
    expect(t.pick(logits)).toBe(1); // 3 - 1.5 < 2
    // both penalised now: [1, 0.5, 1.5, 0.5]
    expect(Array.from(t.distribution(logits))).toEqual([0, 0, 1, 0]);
  });

  it('without processors the row is used as is (no copy)', () => {
    const s = new Sampler({ temperature: 1, topP: 1, seed: 0 });
    expect(s.process(logits)).toBe(logits);
  });

  it('rejects non-finite settings', () => {
    expect(() => new Sampler({ temperature: 1, topP: 1, seed: 0, presencePenalty: Number.NaN })).toThrow(
      /presence/,
    );
    expect(() => new Sampler({ temperature: 1, topP: 1, seed: 0, logitBias: new Map([[-1, 1]]) })).toThrow(
      /token id/,
    );
    expect(() => new Sampler({ temperature: 1, topP: 1, seed: 0, logprobs: 1.5 })).toThrow(/logprobs/);
  });
});

describe('logprobs', () => {
  it('are the raw log_softmax of the target row, whatever the sampling settings', () => {
    const logits = Float32Array.of(0, Math.log(2), Math.log(5), Math.log(2));
    const s = new Sampler({
      temperature: 0.3,
      topP: 0.5,
      seed: 0,
      logitBias: new Map([[0, 9]]),
      logprobs: 3,
    });
    s.record(logits, 3);
    expect(s.logprobs).toHaveLength(1);
    const [e] = s.logprobs;
    expect(e.id).toBe(3);
    expect(e.logprob).toBeCloseTo(Math.log(0.2), 6);
    // largest first, ties to the lower id
    expect(e.top.map((t) => t.id)).toEqual([2, 1, 3]);
    expect(e.top[0].logprob).toBeCloseTo(Math.log(0.5), 6);
    expect(logprobsOf(logits, 0, 0)).toEqual({ id: 0, logprob: expect.closeTo(Math.log(0.1), 6), top: [] });
  });

  it('spell tokens as UTF-8, or as bytes:\\xNN when they are part of a character', () => {
    expect(tokenString(new TextEncoder().encode(' café'))).toBe(' café');
    expect(tokenString(Uint8Array.of(0xe2, 0x80))).toBe('bytes:\\xe2\\x80');
  });
});
