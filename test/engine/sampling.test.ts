import { describe, expect, it } from 'vitest';
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
