/**
 * The batched stage graph and the step planner: a sequence's logits are bit for bit the same alone and
 * packed with other sequences (f32 and the quantized dtypes at the default accuracy level), and the
 * planner's step choice (pure logic).
 */
import { describe, expect, it } from 'vitest';
import { convertModel, type LlamaModel } from '../../workers/engine/src/model/llama';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import { BatchedOrtStage, laneBucket } from '../../workers/engine/src/runtime/batched-stage';
import { KvCache } from '../../workers/engine/src/runtime/kv-cache';
import { planStep } from '../../workers/engine/src/schedule/step-plan';

const base = randomLlama(
  llamaConfig({
    dim: 128,
    hiddenDim: 256,
    nLayers: 3,
    nHeads: 4,
    nKvHeads: 2,
    vocabSize: 300,
    maxSeqLen: 128,
  }),
  3,
);

async function aloneAndPacked(model: LlamaModel) {
  const c = model.config;
  const stage = new BatchedOrtStage(model, { firstLayer: 0, endLayer: c.nLayers }, 8, { threads: 1 });
  const cache = () => new KvCache(c.maxSeqLen, c.nLayers, c.nKvHeads, c.dim / c.nHeads);
  const prompt = Int32Array.of(1, 17, 42, 99, 5);
  try {
    const a = cache();
    const alone = [await stage.run([{ cache: a, input: { tokens: prompt, logitRows: 2 } }])];
    alone.push(await stage.run([{ cache: a, input: { tokens: Int32Array.of(7) } }]));
    const b = cache();
    const others = Array.from({ length: 5 }, cache);
    const first = await stage.run([
      { cache: others[0], input: { tokens: Int32Array.of(1, 2, 3) } },
      { cache: b, input: { tokens: prompt, logitRows: 2 } },
      ...others
        .slice(1)
        .map((o, i) => ({ cache: o, input: { tokens: Int32Array.of(1, 9 + i), logitRows: 1 } })),
    ]);
    const second = await stage.run([
      ...others.map((o, i) => ({ cache: o, input: { tokens: Int32Array.of(20 + i) } })),
      { cache: b, input: { tokens: Int32Array.of(7) } },
    ]);
    return { alone: [alone[0][0], alone[1][0]], packed: [first[1], second[5]], cacheA: a, cacheB: b };
  } finally {
    await stage.release();
  }
}

describe('batched stage', () => {
  for (const dtype of ['f32', 'q8', 'q4'] as const) {
    it(`${dtype}: a sequence's logits and K/V are bit for bit the same alone and packed with others`, async () => {
      const model = dtype === 'f32' ? base : convertModel(base, dtype);
      const { alone, packed, cacheA, cacheB } = await aloneAndPacked(model);
      expect(packed[0].logits!.length).toBe(2 * model.config.vocabSize);
      expect(Array.from(packed[0].logits!)).toEqual(Array.from(alone[0].logits!));
      expect(Array.from(packed[1].logits!)).toEqual(Array.from(alone[1].logits!));
      expect(cacheB.length).toBe(6);
      for (let j = 0; j < model.config.nLayers; j++) {
        expect(Array.from(cacheB.past(j).k)).toEqual(Array.from(cacheA.past(j).k));
        expect(Array.from(cacheB.past(j).v)).toEqual(Array.from(cacheA.past(j).v));
      }
    });
  }

  it('lane buckets grow by powers of four up to the most lanes', () => {
    expect([1, 2, 4, 5, 16, 17, 64].map((n) => laneBucket(n, 64))).toEqual([1, 4, 4, 16, 16, 64, 64]);
    expect(laneBucket(9, 12)).toBe(12);
  });
});

describe('step planner', () => {
  const budget = { maxLanes: 4, maxRows: 100, shortRows: 8 };
  it("serves the oldest forward's stage, short forwards first, prompt chunks within the row budget", () => {
    const pending = [
      { host: 'A', rows: 64 }, // oldest: always goes
      { host: 'B', rows: 1 },
      { host: 'A', rows: 1 },
      { host: 'A', rows: 64 }, // over the row budget once the others are in
      { host: 'A', rows: 5 },
      { host: 'A', rows: 30 },
    ];
    expect(planStep(pending, budget)).toEqual([0, 2, 4, 5]);
  });
  it('never takes more sequences than lanes, and nothing when nothing waits', () => {
    const pending = Array.from({ length: 9 }, () => ({ host: 'A', rows: 1 }));
    expect(planStep(pending, budget)).toEqual([0, 1, 2, 3]);
    expect(planStep([], budget)).toEqual([]);
  });
});
