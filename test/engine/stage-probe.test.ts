import { describe, expect, it } from 'vitest';
import { pipelineSpeedup } from '../../workers/engine/src/bench/ideal';
import {
  poolProbes,
  probeCeiling,
  probeStages,
  type StageProbe,
} from '../../workers/engine/src/bench/stage-probe';
import { createDecoder } from '../../workers/engine/src/decode/index';
import { PipelineDecoder } from '../../workers/engine/src/decode/pipeline';
import { generate, tinyModel } from './decoder-helpers';

describe('probeCeiling', () => {
  const probe: StageProbe = {
    context: 64,
    runs: 4,
    rounds: 1,
    aloneMs: [10, 9],
    togetherMs: [12, 11],
    lockstepMs: [13, 12],
  };

  it('charges every token one tick at the slowest together-run, and each rejection a stage-1-alone refill', () => {
    const c = probeCeiling(probe, 20, 0.5);
    expect(c.floorTickMs).toBe(12);
    expect(c.slowdown[0]).toBeCloseTo(1.2, 12);
    expect(c.slowdown[1]).toBeCloseTo(11 / 9, 12);
    expect(c.speedup).toBeCloseTo(20 / (12 + 0.5 * 10), 12);
    expect(c.efficiency).toBeCloseTo(20 / 17 / pipelineSpeedup(0.5, 2), 12);
  });

  it('with every draft accepted the ceiling is AR over k floor ticks', () => {
    const c = probeCeiling(probe, 20, 1);
    expect(c.efficiency).toBeCloseTo(20 / (2 * 12), 12);
    // stages that do not slow each other down and split AR evenly: a ceiling of exactly 1
    const even = probeCeiling({ ...probe, aloneMs: [10, 10], togetherMs: [10, 10] }, 20, 0.7);
    expect(even.efficiency).toBeCloseTo(1, 12);
  });
});

describe('poolProbes', () => {
  it('averages the medians of two probes and adds their rounds', () => {
    const a: StageProbe = {
      context: 8,
      runs: 2,
      rounds: 1,
      aloneMs: [1, 2],
      togetherMs: [3, 4],
      lockstepMs: [5, 6],
    };
    const b: StageProbe = {
      context: 8,
      runs: 2,
      rounds: 2,
      aloneMs: [3, 4],
      togetherMs: [5, 6],
      lockstepMs: [7, 8],
    };
    expect(poolProbes(a, b)).toEqual({
      context: 8,
      runs: 2,
      rounds: 3,
      aloneMs: [2, 3],
      togetherMs: [4, 5],
      lockstepMs: [6, 7],
    });
  });
});

describe('probeStages on a real pipeline', () => {
  it("times each stage alone and together, then leaves the decoder's output unchanged", async () => {
    const model = tinyModel({ nLayers: 4, vocabSize: 32, seed: 5 });
    const prompt = [1, 7, 3, 9];
    const ar = await createDecoder('ar', { model });
    const ppsd = await createDecoder('ppsd', { model, stages: 2 });
    try {
      expect(ppsd).toBeInstanceOf(PipelineDecoder);
      const want = (await generate(ar, prompt, 12)).tokens;
      expect((await generate(ppsd, prompt, 12)).tokens).toEqual(want);
      const p = await probeStages((ppsd as PipelineDecoder).stageWorkers, {
        dim: model.config.dim,
        context: 16,
        runs: 3,
        rounds: 2,
      });
      expect(p.aloneMs).toHaveLength(2);
      expect(p.togetherMs).toHaveLength(2);
      expect(p.lockstepMs).toHaveLength(2);
      for (const t of [...p.aloneMs, ...p.togetherMs, ...p.lockstepMs]) expect(t).toBeGreaterThan(0);
      // the probe filled and then emptied the caches: the next generation is still AR's, token for token
      expect((await generate(ppsd, prompt, 12)).tokens).toEqual(want);
    } finally {
      await Promise.all([ar.close(), ppsd.close()]);
    }
  }, 60_000);
});
