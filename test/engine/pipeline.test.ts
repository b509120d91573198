/** Pipeline plumbing: stage plans, stage Workers (transfer, truncation, safe shutdown), the SPD drafter. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { specsOf, stageBoundaries } from '../../workers/engine/src/decode/pipeline';
import {
  identitySpdDrafter,
  loadSpdDrafter,
  SpdDrafterSession,
  saveSpdDrafter,
  spdDraftHidden,
  spdFeatureLags,
} from '../../workers/engine/src/decode/spd-drafter';
import { WorkerStage } from '../../workers/engine/src/decode/worker-stage';
import { fillNormal, llamaConfig, randomLlama, uniformRng } from '../../workers/engine/src/model/random';
import { referenceForward, referenceHead } from '../../workers/engine/src/model/reference';
import { tinyModel } from './decoder-helpers';

describe('stage plans', () => {
  it('first stage ends at E, the rest split evenly (larger stages last)', () => {
    expect(stageBoundaries(4, 2)).toEqual([0, 2, 4]);
    expect(stageBoundaries(5, 2)).toEqual([0, 3, 5]);
    expect(stageBoundaries(5, 3)).toEqual([0, 2, 3, 5]);
    expect(stageBoundaries(5, 5)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(stageBoundaries(12, 4)).toEqual([0, 3, 6, 9, 12]);
    expect(stageBoundaries(12, 3, 2)).toEqual([0, 2, 7, 12]);
    expect(stageBoundaries(6, 1)).toEqual([0, 6]);
    expect(specsOf([0, 2, 5])).toEqual([
      { firstLayer: 0, endLayer: 2 },
      { firstLayer: 2, endLayer: 5 },
    ]);
  });

  it('rejects impossible plans', () => {
    expect(() => stageBoundaries(3, 4)).toThrow(/at least 4 layers/);
    expect(() => stageBoundaries(4, 3, 3)).toThrow(/too few layers/);
    expect(() => stageBoundaries(4, 2, 0)).toThrow(/exit layer/);
  });
});

describe('stage workers', () => {
  const model = tinyModel();
  const workers: WorkerStage[] = [];
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.close()));
  });

  it('run stages in Workers: outputs equal the float64 reference, input buffers are transferred', async () => {
    const [a, b] = await Promise.all([
      WorkerStage.start(model, { firstLayer: 0, endLayer: 2, exit: { afterLayer: 2 } }),
      WorkerStage.start(model, { firstLayer: 2, endLayer: 4 }),
    ]);
    workers.push(a, b);
    const tokens = [1, 7, 3, 9];
    const ref = referenceForward(model, tokens, { exit: { afterLayer: 2 } });
    const o1 = await a.run({ position: 0, tokens: Int32Array.from(tokens), logitRows: 1 });
    expect(o1.hidden).toHaveLength(4 * model.config.dim);
    const hidden = o1.hidden!;
    const o2 = await b.run({ position: 0, hidden, logitRows: 1 });
    expect(hidden.byteLength).toBe(0); // transferred to the Worker, not copied
    const near = (x: ArrayLike<number>, y: ArrayLike<number>) =>
      Array.from(x).every((v, i) => Math.abs(v - y[i]) < 1e-4);
    expect(near(o2.logits!, ref.logits[3])).toBe(true);
    expect(near(o1.exitLogits!, ref.exitLogits![3])).toBe(true);
    expect(o1.busyMs).toBeGreaterThan(0);

    // truncate rides on the next run; a wrong expected position is an error, not silent corruption
    const again = await a.run({ truncate: 3, position: 3, tokens: Int32Array.of(9), logitRows: 1 });
    expect(near(again.exitLogits!, ref.exitLogits![3])).toBe(true);
    await expect(a.run({ position: 7, tokens: Int32Array.of(1) })).rejects.toThrow(/holds 4 positions/);
  });

  it('close() lets a run in flight finish, then the Worker exits by itself', async () => {
    // big enough that the runs are still going when close() is called
    const big = randomLlama(
      llamaConfig({ dim: 256, nLayers: 2, nHeads: 4, vocabSize: 4000, maxSeqLen: 512 }),
      1,
    );
    const w = await WorkerStage.start(big, { firstLayer: 0, endLayer: 2 }, { maxSeqLen: 512 });
    const tokens = Int32Array.from({ length: 400 }, (_, i) => (i * 37) % 4000);
    const runs = [
      w.run({ position: 0, tokens, logitRows: 1 }),
      w.run({ position: 400, tokens: tokens.subarray(0, 50).slice(), logitRows: 1 }),
    ];
    await w.close();
    const outs = await Promise.all(runs);
    expect(outs[1].logits).toHaveLength(4000);
    await expect(w.run({ position: 0, tokens })).rejects.toThrow(/closed/);
  });
});

describe('spd drafter', () => {
  const model = tinyModel({ vocabSize: 16 });
  const dim = model.config.dim;
  const rand = uniformRng(3);
  const weights = {
    depths: [2, 4],
    emb: fillNormal(new Float32Array(dim * dim), rand, 0.2),
    byDepth: [
      fillNormal(new Float32Array(dim * dim), rand, 0.2),
      fillNormal(new Float32Array(dim * dim), rand, 0.2),
    ],
    bias: fillNormal(new Float32Array(dim), rand, 0.2),
  };

  it('save / load round trip (emb, depth.<d>, bias)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'spd-drafter-'));
    try {
      const path = join(dir, 'spd-drafter.safetensors');
      await saveSpdDrafter(path, weights);
      const back = await loadSpdDrafter(path);
      expect(back.depths).toEqual([2, 4]);
      expect(back.emb).toEqual(weights.emb);
      expect(back.byDepth).toEqual(weights.byDepth);
      expect(back.bias).toEqual(weights.bias);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the ORT drafter equals the TypeScript reference: head(b + W_emb emb(x) + sum_d W_d f_d)', async () => {
    const session = await SpdDrafterSession.create(model, weights);
    try {
      const token = 5;
      const f = [fillNormal(new Float32Array(dim), rand, 1), fillNormal(new Float32Array(dim), rand, 1)];
      const emb = model.weights.tokenEmbedding.subarray(token * dim, (token + 1) * dim);
      const want = referenceHead(model, spdDraftHidden(weights, emb, f));
      const features = new Float32Array(2 * dim);
      features.set(f[0], 0);
      features.set(f[1], dim);
      const got = await session.logits(token, features);
      const scale = Math.max(...Array.from(want, Math.abs));
      expect(Math.max(...Array.from(got, (v, i) => Math.abs(v - want[i])))).toBeLessThan(1e-4 * scale);
    } finally {
      await session.release();
    }
  });

  it('feature lags follow the stage plan; the identity default uses the deepest in-flight depth', () => {
    expect(spdFeatureLags([2, 4], [0, 2, 4])).toEqual([1, 2]);
    expect(spdFeatureLags([1, 3, 5], [0, 1, 3, 5])).toEqual([1, 2, 3]);
    expect(() => spdFeatureLags([3], [0, 2, 4])).toThrow(/not a stage boundary/);
    const id = identitySpdDrafter(4, 2);
    expect(id.depths).toEqual([2]);
    expect(Array.from(spdDraftHidden(id, [9, 9, 9, 9], [[1, 2, 3, 4]]))).toEqual([1, 2, 3, 4]);
  });
});
