/**
 * ORT stage graphs vs the float64 reference, on small random models.
 * Metric: per row, max|ort - ref| / max|ref| (relErr) must stay under 1e-4.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { ExitHead, LlamaModel, SkipSet } from '../../workers/engine/src/model/llama';
import { fillNormal, llamaConfig, randomLlama, uniformRng } from '../../workers/engine/src/model/random';
import { createReferenceStage, referenceForward } from '../../workers/engine/src/model/reference';
import type { Stage } from '../../workers/engine/src/model/stage';
import { createOrtStage } from '../../workers/engine/src/runtime';
import { pipelineForward, relErr, row, StagePool, splits } from './runtime-helpers';

const TOL = 1e-4;

// Weights with std 1/sqrt(dim) so attention is far from uniform and every bug shows in the logits.
const small = (c: Parameters<typeof llamaConfig>[0], seed: number) =>
  randomLlama(llamaConfig({ maxSeqLen: 32, ...c }), seed, { std: 1 / Math.sqrt(c.dim), normNoise: 0.2 });

const MODELS: Record<string, LlamaModel> = {
  // grouped-query attention (4 query heads over 2 kv heads), untied classifier, odd hidden/vocab sizes
  gqaUntied: small(
    { dim: 24, nLayers: 4, nHeads: 4, nKvHeads: 2, hiddenDim: 37, vocabSize: 51, tiedEmbeddings: false },
    1,
  ),
  // multi-head attention, tied classifier, another rope theta
  mhaTied: small(
    { dim: 16, nLayers: 3, nHeads: 2, nKvHeads: 2, hiddenDim: 40, vocabSize: 33, ropeTheta: 500 },
    2,
  ),
  // multi-query attention (one kv head), head size 10
  mqa: small(
    { dim: 30, nLayers: 2, nHeads: 3, nKvHeads: 1, hiddenDim: 23, vocabSize: 19, tiedEmbeddings: false },
    3,
  ),
};

function randomTokens(n: number, vocab: number, seed: number): number[] {
  const r = uniformRng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

const affines = new Map<string, ExitHead['affine']>();
function randomAffine(dim: number, seed: number): ExitHead['affine'] {
  const key = `${dim}:${seed}`;
  if (!affines.has(key)) affines.set(key, makeAffine(dim, seed));
  return affines.get(key);
}
function makeAffine(dim: number, seed: number): ExitHead['affine'] {
  const r = uniformRng(seed);
  const weight = fillNormal(new Float32Array(dim * dim), r, 1 / Math.sqrt(dim));
  for (let i = 0; i < dim; i++) weight[i * dim + i] += 1;
  return { weight, bias: fillNormal(new Float32Array(dim), r, 0.1) };
}

// Stages are memoized per model and attention formulation (and reset with truncate(0) before use).
const pools = new Map<string, StagePool>();
const modelIds = new Map<LlamaModel, number>();
type Variant = 'fused' | 'standard' | 'device';
function poolFor(model: LlamaModel, variant: Variant): StagePool {
  if (!modelIds.has(model)) modelIds.set(model, modelIds.size);
  const key = `${modelIds.get(model)}:${variant}`;
  const attention = variant === 'fused' ? 'fused' : 'standard';
  if (!pools.has(key))
    pools.set(key, new StagePool(model, 32, attention, variant === 'device' ? 'device' : 'host'));
  return pools.get(key)!;
}
afterAll(async () => {
  for (const p of pools.values()) await p.releaseAll();
});

/**
 * Runs `tokens` through every split of the model into contiguous stages: a prefill block of `prefill`
 * rows, then single-token steps, comparing logits (and exit logits / exit hidden) with the reference.
 */
async function checkAllSplits(
  model: LlamaModel,
  opts: { exit?: ExitHead; skip?: SkipSet; prefill: number; steps: number; attention?: Variant },
) {
  const c = model.config;
  const pool = poolFor(model, opts.attention ?? 'fused');
  const tokens = randomTokens(opts.prefill + opts.steps, c.vocabSize, 7);
  const ref = referenceForward(model, tokens, { exit: opts.exit, skip: opts.skip });
  let worst = 0;
  let checked = 0;
  for (const parts of splits(c.nLayers)) {
    const stages: Stage[] = [];
    for (const [a, b] of parts) {
      // the exit head goes to the stage that ends at or contains its layer
      const exit = opts.exit && opts.exit.afterLayer > a && opts.exit.afterLayer <= b ? opts.exit : undefined;
      const s = await pool.get({ firstLayer: a, endLayer: b, exit, skip: opts.skip });
      s.truncate(0);
      stages.push(s);
    }
    const blocks = [opts.prefill, ...Array(opts.steps).fill(1)];
    let pos = 0;
    for (const T of blocks) {
      const out = await pipelineForward(stages, tokens.slice(pos, pos + T));
      for (let t = 0; t < T; t++) {
        const e = relErr(row(out.logits, t, c.vocabSize), ref.logits[pos + t]);
        worst = Math.max(worst, e);
        expect(e, `split ${JSON.stringify(parts)} position ${pos + t}`).toBeLessThan(TOL);
        if (opts.exit) {
          expect(relErr(row(out.exitLogits!, t, c.vocabSize), ref.exitLogits![pos + t])).toBeLessThan(TOL);
          expect(relErr(row(out.exitHidden!, t, c.dim), ref.exitHidden![pos + t])).toBeLessThan(TOL);
        }
        checked++;
      }
      pos += T;
    }
    for (const s of stages) expect(s.length).toBe(tokens.length);
  }
  return { worst, checked };
}

describe('ORT stages match the float64 reference', () => {
  for (const [name, model] of Object.entries(MODELS)) {
    // 'device': the device-resident cache graph (WebGPU's), run here on the CPU EP
    for (const attention of ['fused', 'standard', 'device'] as const) {
      it(`${name} (${attention} attention): every stage split, prefill block then single-token steps`, async () => {
        const { checked } = await checkAllSplits(model, { prefill: 5, steps: 3, attention });
        expect(checked).toBe(8 * 2 ** (model.config.nLayers - 1));
      });
    }
  }

  const model = MODELS.gqaUntied;
  for (let e = 1; e < model.config.nLayers; e++) {
    it(`exit head after layer ${e} (logit lens and affine), every split`, async () => {
      await checkAllSplits(model, { exit: { afterLayer: e }, prefill: 4, steps: 2 });
      await checkAllSplits(model, {
        exit: { afterLayer: e, affine: randomAffine(model.config.dim, e) },
        prefill: 4,
        steps: 2,
      });
    });
  }

  it('exit head at the very start of a stage (afterLayer == firstLayer) and at the model end', async () => {
    const c = model.config;
    const tokens = randomTokens(6, c.vocabSize, 3);
    // [exit layer, stages, index of the stage with the head]
    const cases: [number, [number, number][], number][] = [
      [0, [[0, 4]], 0], // exit on the token embeddings
      [
        2,
        [
          [0, 2],
          [2, 4],
        ],
        1,
      ], // exit at the very start of the second stage
      [4, [[0, 4]], 0], // exit after the last layer (affine, then the model's own head)
    ];
    for (const [e, parts, withExit] of cases) {
      const exit: ExitHead = { afterLayer: e, affine: randomAffine(c.dim, 10 + e) };
      const ref = referenceForward(model, tokens, { exit });
      const stages: Stage[] = [];
      for (const [i, [a, b]] of parts.entries()) {
        const spec = { firstLayer: a, endLayer: b, exit: i === withExit ? exit : undefined };
        stages.push(await createOrtStage(model, spec, { threads: 1, maxSeqLen: 16 }));
      }
      const out = await pipelineForward(stages, tokens);
      for (let t = 0; t < tokens.length; t++) {
        expect(relErr(row(out.logits, t, c.vocabSize), ref.logits[t])).toBeLessThan(TOL);
        expect(relErr(row(out.exitLogits!, t, c.vocabSize), ref.exitLogits![t])).toBeLessThan(TOL);
        expect(relErr(row(out.exitHidden!, t, c.dim), ref.exitHidden![t])).toBeLessThan(TOL);
      }
      for (const s of stages) await s.release();
    }
  });

  const skipSets: SkipSet[] = [
    { attention: [1], mlp: [2] },
    { attention: [0, 3], mlp: [0] },
    { attention: [2], mlp: [1, 2, 3] },
  ];
  for (const skip of skipSets) {
    it(`skip set ${JSON.stringify(skip)}, every split, with an exit head`, async () => {
      await checkAllSplits(model, { skip, exit: { afterLayer: 2 }, prefill: 4, steps: 2 });
      await checkAllSplits(model, {
        skip,
        exit: { afterLayer: 3 },
        prefill: 3,
        steps: 1,
        attention: 'standard',
      });
      await checkAllSplits(model, {
        skip,
        exit: { afterLayer: 1 },
        prefill: 2,
        steps: 2,
        attention: 'device',
      });
    });
  }
});

describe('KV cache', () => {
  const model = MODELS.gqaUntied;
  const c = model.config;

  it('truncate then re-forward gives the logits of never having gone further', async () => {
    const a = randomTokens(9, c.vocabSize, 11);
    const b = randomTokens(3, c.vocabSize, 12);
    const stages = [
      await createOrtStage(model, { firstLayer: 0, endLayer: 1 }, { threads: 1, maxSeqLen: 16 }),
      await createOrtStage(model, { firstLayer: 1, endLayer: 4 }, { threads: 1, maxSeqLen: 16 }),
    ];
    await pipelineForward(stages, a.slice(0, 6));
    await pipelineForward(stages, a.slice(6, 7));
    await pipelineForward(stages, a.slice(7, 9));
    for (const s of stages) {
      expect(s.length).toBe(9);
      s.truncate(4);
      expect(s.length).toBe(4);
    }
    const out = await pipelineForward(stages, b);
    const fresh = [
      await createOrtStage(model, { firstLayer: 0, endLayer: 4 }, { threads: 1, maxSeqLen: 16 }),
    ];
    await pipelineForward(fresh, a.slice(0, 4));
    const direct = await pipelineForward(fresh, b);
    const ref = referenceForward(model, [...a.slice(0, 4), ...b]);
    for (let t = 0; t < b.length; t++) {
      expect(relErr(row(out.logits, t, c.vocabSize), ref.logits[4 + t])).toBeLessThan(TOL);
      expect(relErr(row(out.logits, t, c.vocabSize), row(direct.logits, t, c.vocabSize))).toBeLessThan(1e-5);
    }
    expect(() => stages[0].truncate(8)).toThrow(/truncate/);
    for (const s of [...stages, ...fresh]) await s.release();
  });

  it('device-resident cache (CPU EP): truncate then re-forward, overflow, no host cache', async () => {
    const a = randomTokens(9, c.vocabSize, 11);
    const b = randomTokens(3, c.vocabSize, 12);
    const opts = { threads: 1, maxSeqLen: 16, kvCache: 'device' as const, attention: 'standard' as const };
    const stages = [
      await createOrtStage(model, { firstLayer: 0, endLayer: 2 }, opts),
      await createOrtStage(model, { firstLayer: 2, endLayer: 4 }, opts),
    ];
    expect(stages[0].kvCache).toBe('device');
    expect(() => stages[0].cache).toThrow(/on the device/);
    await pipelineForward(stages, a.slice(0, 6));
    await pipelineForward(stages, a.slice(6, 9));
    for (const s of stages) s.truncate(4);
    const out = await pipelineForward(stages, b);
    const ref = referenceForward(model, [...a.slice(0, 4), ...b]);
    for (let t = 0; t < b.length; t++)
      expect(relErr(row(out.logits, t, c.vocabSize), ref.logits[4 + t])).toBeLessThan(TOL);
    expect(stages[1].length).toBe(7);
    await expect(pipelineForward(stages, randomTokens(10, c.vocabSize, 1))).rejects.toThrow(
      /context overflow/,
    );
    expect(stages[0].length).toBe(7);
    for (const s of stages) await s.release();
  });

  it('a block of T rows equals T single-token steps', async () => {
    const tokens = randomTokens(7, c.vocabSize, 13);
    const block = await createOrtStage(model, { firstLayer: 0, endLayer: 4 }, { threads: 1, maxSeqLen: 16 });
    const steps = await createOrtStage(model, { firstLayer: 0, endLayer: 4 }, { threads: 1, maxSeqLen: 16 });
    await block.forward({ tokens: Int32Array.from(tokens.slice(0, 2)) });
    const outBlock = await block.forward({ tokens: Int32Array.from(tokens.slice(2)) });
    for (let t = 0; t < tokens.length; t++) {
      const out = await steps.forward({ tokens: Int32Array.of(tokens[t]) });
      if (t >= 2) expect(relErr(out.logits!, row(outBlock.logits!, t - 2, c.vocabSize))).toBeLessThan(1e-5);
    }
    // the caches agree too
    for (let j = 0; j < 4; j++) {
      expect(relErr(block.cache.past(j).k, steps.cache.past(j).k)).toBeLessThan(1e-5);
      expect(relErr(block.cache.past(j).v, steps.cache.past(j).v)).toBeLessThan(1e-5);
      expect(block.cache.past(j).k.length).toBe(7 * block.cache.rowSize);
    }
    await block.release();
    await steps.release();
  });

  it('logitRows limits logits (and exit logits) to the last rows', async () => {
    const tokens = randomTokens(6, c.vocabSize, 14);
    const exit: ExitHead = { afterLayer: 2 };
    const ref = referenceForward(model, tokens, { exit });
    const s = await createOrtStage(
      model,
      { firstLayer: 0, endLayer: 4, exit },
      { threads: 1, maxSeqLen: 16 },
    );
    const out = await s.forward({ tokens: Int32Array.from(tokens), logitRows: 2 });
    expect(out.rows).toBe(6);
    expect(out.logits!.length).toBe(2 * c.vocabSize);
    expect(out.exitLogits!.length).toBe(2 * c.vocabSize);
    expect(out.exitHidden!.length).toBe(6 * c.dim);
    for (let r = 0; r < 2; r++) {
      expect(relErr(row(out.logits!, r, c.vocabSize), ref.logits[4 + r])).toBeLessThan(TOL);
      expect(relErr(row(out.exitLogits!, r, c.vocabSize), ref.exitLogits![4 + r])).toBeLessThan(TOL);
    }
    await expect(s.forward({ tokens: Int32Array.of(1), logitRows: 2 })).rejects.toThrow(/logitRows/);
    await s.release();
  });

  it('skipped attention layers leave zero K/V in the cache', async () => {
    const s = await createOrtStage(
      model,
      { firstLayer: 1, endLayer: 3, skip: { attention: [2], mlp: [] } },
      { threads: 1, maxSeqLen: 8 },
    );
    await s.forward({ hidden: fillNormal(new Float32Array(3 * c.dim), uniformRng(5), 1) });
    expect(s.cache.rowSize).toBe(c.nKvHeads * (c.dim / c.nHeads));
    const { k: k1, v: v1 } = s.cache.past(0); // layer 1
    const { k: k2, v: v2 } = s.cache.past(1); // layer 2, skipped
    expect(k1.length).toBe(3 * s.cache.rowSize);
    for (let p = 0; p < 3; p++) {
      const row = (a: Float32Array) => a.subarray(p * s.cache.rowSize, (p + 1) * s.cache.rowSize);
      expect(row(k1).some((x) => x !== 0)).toBe(true);
      expect(row(v1).some((x) => x !== 0)).toBe(true);
      expect(row(k2).every((x) => x === 0)).toBe(true);
      expect(row(v2).every((x) => x === 0)).toBe(true);
    }
    await s.release();
  });

  it('context overflow is a clear error and leaves the cache unchanged', async () => {
    const s = await createOrtStage(model, { firstLayer: 0, endLayer: 4 }, { threads: 1, maxSeqLen: 8 });
    await s.forward({ tokens: Int32Array.from(randomTokens(6, c.vocabSize, 15)) });
    await expect(s.forward({ tokens: Int32Array.of(1, 2, 3) })).rejects.toThrow(
      /context overflow: 6 cached \+ 3 new positions > maxSeqLen 8/,
    );
    expect(s.length).toBe(6);
    await s.forward({ tokens: Int32Array.of(1, 2) }); // exactly full is fine
    expect(s.length).toBe(8);
    await expect(s.forward({ tokens: Int32Array.of(1) })).rejects.toThrow(/context overflow/);
    await s.release();
    await expect(s.forward({ tokens: Int32Array.of(1) })).rejects.toThrow(/release/);
  });

  it('bad inputs are rejected with clear messages', async () => {
    const s = await createOrtStage(model, { firstLayer: 0, endLayer: 2 }, { threads: 1, maxSeqLen: 8 });
    await expect(s.forward({ tokens: Int32Array.of(c.vocabSize) })).rejects.toThrow(/outside the vocabulary/);
    await expect(s.forward({ hidden: new Float32Array(c.dim) })).rejects.toThrow(/needs tokens/);
    const t = await createOrtStage(model, { firstLayer: 2, endLayer: 4 }, { threads: 1, maxSeqLen: 8 });
    await expect(t.forward({ hidden: new Float32Array(c.dim + 1) })).rejects.toThrow(/multiple of dim/);
    await s.release();
    await t.release();
  });
});

describe('reference stage', () => {
  it('chained createReferenceStage matches referenceForward (float32 hand-offs)', async () => {
    const model = MODELS.gqaUntied;
    const c = model.config;
    const tokens = randomTokens(6, c.vocabSize, 21);
    const exit: ExitHead = { afterLayer: 1, affine: randomAffine(c.dim, 3) };
    const ref = referenceForward(model, tokens, { exit });
    const stages = [
      createReferenceStage(model, { firstLayer: 0, endLayer: 1, exit }),
      createReferenceStage(model, { firstLayer: 1, endLayer: 4 }),
    ];
    const a = await pipelineForward(stages, tokens.slice(0, 4), 2);
    const b = await pipelineForward(stages, tokens.slice(4, 6));
    expect(a.logits.length).toBe(2 * c.vocabSize);
    for (let t = 0; t < 2; t++) {
      expect(relErr(row(a.logits, t, c.vocabSize), ref.logits[2 + t])).toBeLessThan(1e-6);
      expect(relErr(row(b.logits, t, c.vocabSize), ref.logits[4 + t])).toBeLessThan(1e-6);
      expect(relErr(row(b.exitLogits!, t, c.vocabSize), ref.exitLogits![4 + t])).toBeLessThan(1e-6);
    }
    for (const s of stages) s.truncate(3);
    expect(stages[1].length).toBe(3);
    await expect(stages[0].forward({ tokens: Int32Array.from(Array(30).fill(1)) })).rejects.toThrow(
      /context overflow/,
    );
  });
});
