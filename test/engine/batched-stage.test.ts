/**
 * The batched stage graph and the step planner: a sequence's logits are bit for bit the same alone and
 * packed with other sequences (f32 and the quantized dtypes at the default accuracy level) and split
 * across smaller buckets' runs; the lane-run plan and the step planner's choice (pure logic).
 */
import { describe, expect, it } from 'vitest';
import { convertModel, type LlamaModel } from '../../workers/engine/src/model/llama';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import {
  BatchedOrtStage,
  laneBucket,
  planLaneRuns,
  splitCanPay,
} from '../../workers/engine/src/runtime/batched-stage';
import { KvCache } from '../../workers/engine/src/runtime/kv-cache';
import { createOrtStage } from '../../workers/engine/src/runtime/ort-stage';
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

  // grouped-query (2 query heads per kv head) and plain multi-head attention take different layouts
  for (const [shape, nKvHeads] of [
    ['GQA', 2],
    ['MHA', 4],
  ] as const) {
    for (const dtype of ['f32', 'q4'] as const) {
      it(`${shape} ${dtype}: a packed sequence gets bit for bit what the single-sequence graph gives`, async () => {
        const m = randomLlama(llamaConfig({ ...base.config, nKvHeads }), 5);
        const model = dtype === 'f32' ? m : convertModel(m, dtype);
        const c = model.config;
        const spec = { firstLayer: 0, endLayer: c.nLayers };
        const single = await createOrtStage(model, spec, { threads: 1 });
        const batched = new BatchedOrtStage(model, spec, 4, { threads: 1 });
        try {
          const prompt = Int32Array.of(1, 17, 42, 99, 5);
          const alone = [await single.forward({ tokens: prompt, logitRows: 1 })];
          alone.push(await single.forward({ tokens: Int32Array.of(7) }));
          const caches = Array.from(
            { length: 3 },
            () => new KvCache(c.maxSeqLen, c.nLayers, c.nKvHeads, c.dim / c.nHeads),
          );
          const first = await batched.run([
            { cache: caches[0], input: { tokens: Int32Array.of(3, 4), logitRows: 1 } },
            { cache: caches[1], input: { tokens: prompt, logitRows: 1 } },
          ]);
          const second = await batched.run([
            { cache: caches[2], input: { tokens: Int32Array.of(9) } },
            { cache: caches[0], input: { tokens: Int32Array.of(8) } },
            { cache: caches[1], input: { tokens: Int32Array.of(7) } },
          ]);
          expect(Array.from(first[1].logits!)).toEqual(Array.from(alone[0].logits!));
          expect(Array.from(second[2].logits!)).toEqual(Array.from(alone[1].logits!));
        } finally {
          await single.release();
          await batched.release();
        }
      });
    }
  }

  it('lane buckets grow by powers of four up to the most lanes', () => {
    expect([1, 2, 4, 5, 16, 17, 64].map((n) => laneBucket(n, 64))).toEqual([1, 4, 4, 16, 16, 64, 64]);
    expect(laneBucket(9, 12)).toBe(12);
  });

  it('a badly filled bucket runs as runs of one smaller bucket when the measured costs say so (pure logic)', () => {
    const costs = {
      fixed: new Map([
        [1, 1],
        [4, 2],
        [16, 6],
      ]),
      perLane: 0.1,
    };
    // 5 in 16 lanes: 6.4 ms; as 3 + 2 on the 4-lane graph: 4.3
    expect(planLaneRuns(5, 16, costs)).toEqual({ lanes: 4, runs: [3, 2] });
    expect(planLaneRuns(8, 16, costs)).toEqual({ lanes: 4, runs: [4, 4] });
    // 16 in one run: 7.5 ms against 9.2 as four 4-lane runs
    expect(planLaneRuns(16, 16, costs)).toEqual({ lanes: 16, runs: [16] });
    // a split must be clearly cheaper: 4 in one 4-lane run (2.3) against 4 one-lane runs (4)
    expect(planLaneRuns(4, 16, costs)).toEqual({ lanes: 4, runs: [4] });
    const close = {
      fixed: new Map([
        [1, 1],
        [4, 1.8],
      ]),
      perLane: 0.1,
    };
    expect(planLaneRuns(2, 4, close)).toEqual({ lanes: 4, runs: [2] }); // 2 against 1.9: not enough
    // unmeasured, or the whole bucket unmeasured: one run, as before
    expect(planLaneRuns(5, 16, undefined)).toEqual({ lanes: 16, runs: [5] });
    expect(planLaneRuns(5, 16, { fixed: new Map([[4, 2]]), perLane: 0.1 })).toEqual({ lanes: 16, runs: [5] });
    expect(planLaneRuns(1, 16, costs)).toEqual({ lanes: 1, runs: [1] });
  });

  for (const dtype of ['f32', 'q4'] as const) {
    it(`${dtype}: sequences split across smaller buckets' runs get the very numbers of one run`, async () => {
      const model = dtype === 'f32' ? base : convertModel(base, dtype);
      const c = model.config;
      const stage = new BatchedOrtStage(model, { firstLayer: 0, endLayer: c.nLayers }, 16, { threads: 1 });
      const step = async (split: boolean) => {
        stage.runCosts = split
          ? {
              fixed: new Map([
                [1, 1],
                [4, 1],
                [16, 100],
              ]),
              perLane: 0,
            }
          : undefined;
        const caches = Array.from(
          { length: 5 },
          () => new KvCache(c.maxSeqLen, c.nLayers, c.nKvHeads, c.dim / c.nHeads),
        );
        const prompts = caches.map((cache, i) => ({
          cache,
          input: { tokens: Int32Array.of(1, 3 + i, 7), logitRows: 1 },
        }));
        const first = await stage.run(prompts);
        const second = await stage.run(
          caches.map((cache, i) => ({ cache, input: { tokens: Int32Array.of(11 + i) } })),
        );
        return { logits: [...first, ...second].map((o) => Array.from(o.logits!)), caches };
      };
      try {
        const one = await step(false);
        const split = await step(true);
        expect(planLaneRuns(5, 16, stage.runCosts)).toEqual({ lanes: 4, runs: [3, 2] });
        expect(split.logits).toEqual(one.logits);
        for (const [i, cache] of split.caches.entries())
          for (let j = 0; j < c.nLayers; j++) {
            expect(Array.from(cache.past(j).k)).toEqual(Array.from(one.caches[i].past(j).k));
            expect(Array.from(cache.past(j).v)).toEqual(Array.from(one.caches[i].past(j).v));
          }
      } finally {
        await stage.release();
      }
    });
  }

  it('warm() may measure the buckets (timing decides, not asserted); runs of any size still answer each sequence', async () => {
    const c = base.config;
    const stage = new BatchedOrtStage(base, { firstLayer: 0, endLayer: c.nLayers }, 16, { threads: 1 });
    try {
      await stage.warm();
      if (stage.runCosts) expect([...stage.runCosts.fixed.keys()].sort((a, b) => a - b)).toEqual([1, 4, 16]);
      for (const n of [5, 7, 16]) {
        const caches = Array.from(
          { length: n },
          () => new KvCache(c.maxSeqLen, c.nLayers, c.nKvHeads, c.dim / c.nHeads),
        );
        const outs = await stage.run(
          caches.map((cache) => ({ cache, input: { tokens: Int32Array.of(1, 2) } })),
        );
        expect(outs.map((o) => o.rows)).toEqual(Array(n).fill(2));
        for (const cache of caches) expect(cache.length).toBe(2);
      }
    } finally {
      await stage.release();
    }
  });

  it('the full-bucket timing is skipped where no split could pay (pure logic)', () => {
    // stories260K-like: lanes' nodes dominate, two 4-lane runs (1.2) undercut one 16-lane run (1.6)
    expect(
      splitCanPay(
        new Map([
          [1, 0.33],
          [4, 0.6],
          [16, 1.6],
        ]),
      ),
    ).toBe(true);
    // the 110M shape in Q4_0: the weights dominate every bucket
    expect(
      splitCanPay(
        new Map([
          [1, 5],
          [4, 6.2],
          [16, 11.6],
        ]),
      ),
    ).toBe(false);
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
