/** Pipeline plumbing: stage plans, stage Workers (transfer, truncation, safe shutdown), the SPD drafter. */

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SHAPES } from '../../workers/engine/src/cli/commands/synth';
import { frequencyRankedVocab } from '../../workers/engine/src/decode/draft-vocab';
import {
  balancedBoundaries,
  forwardMacs,
  layerCost,
  layerMacs,
  planBoundaries,
  specsOf,
  stageBoundaries,
  stageMacs,
  sublayerSpecs,
  sublayerSplit,
  sublayerStageMacs,
} from '../../workers/engine/src/decode/pipeline';
import { withDraftVocab } from '../../workers/engine/src/decode/ppsd';
import {
  identitySpdDrafter,
  loadSpdDrafter,
  SpdDrafterSession,
  saveSpdDrafter,
  spdDraftHidden,
  spdFeatureLags,
} from '../../workers/engine/src/decode/spd-drafter';
import { WorkerStage } from '../../workers/engine/src/decode/worker-stage';
import { denseRows } from '../../workers/engine/src/model/matrix';
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

describe('cost-balanced stage plans', () => {
  // Llama-2 110M shape and stories260K's
  const c110 = llamaConfig(SHAPES['llama2-110m'].shape);
  const c260 = llamaConfig({ dim: 64, hiddenDim: 172, nLayers: 5, nHeads: 8, nKvHeads: 4, vocabSize: 512 });

  it('models a layer as its projections + MLP and each stage with its heads', () => {
    expect(layerMacs(c110)).toBe(768 * (768 + 2 * 768) + 768 * 768 + 3 * 768 * 2048);
    expect(layerMacs(c260)).toBe(64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * 172); // GQA: kv dim 32
    const L = layerCost(c110);
    expect(stageMacs(c110, [0, 6, 12])).toEqual([6 * L + 32000 * 768, 6 * L + 32000 * 768]);
    expect(stageMacs(c110, [0, 7, 12], { draftRows: 4096, draftAffine: true })).toEqual([
      7 * L + 4096 * 768 + 768 * 768,
      5 * L + 32000 * 768,
    ]);
    expect(stageMacs(c110, [0, 6, 12], { draftRows: 0 })[0]).toBe(6 * L); // SPD: no head in stage 1
    expect(forwardMacs(c110)).toBe(12 * L + 32000 * 768);
  });

  it('minimises the costliest stage: the last stage carries the classifier, stage 1 the draft head', () => {
    // full-vocabulary exit head: both stages carry a 32000-row head, equal layers are balanced
    expect(balancedBoundaries(c110, 2)).toEqual([0, 6, 12]);
    // a 4096-row draft head: stage 1 takes more layers
    const b = balancedBoundaries(c110, 2, { draftRows: 4096 });
    expect(b).toEqual([0, 7, 12]);
    const worst = (bb: number[]) => Math.max(...stageMacs(c110, bb, { draftRows: 4096 }));
    for (let E = 1; E < 12; E++) expect(worst(b)).toBeLessThanOrEqual(worst([0, E, 12]));
    // SPD (no head in stage 1) on stories260K: the classifier pushes a layer into stage 1
    expect(balancedBoundaries(c260, 2, { draftRows: 0 })).toEqual([0, 3, 5]);
    // k = 3 and 4: every plan is valid and no other plan has a cheaper costliest stage
    for (const k of [3, 4]) {
      const bk = balancedBoundaries(c110, k, { draftRows: 4096 });
      expect(bk).toHaveLength(k + 1);
      expect(bk[0]).toBe(0);
      expect(bk[k]).toBe(12);
      for (let j = 0; j < k; j++) expect(bk[j + 1]).toBeGreaterThan(bk[j]);
      const best = Math.max(...stageMacs(c110, bk, { draftRows: 4096 }));
      const all = (prefix: number[]): number[][] =>
        prefix.length === k
          ? [[...prefix, 12]]
          : Array.from({ length: 12 - prefix[prefix.length - 1] - (k - prefix.length) }, (_, i) =>
              all([...prefix, prefix[prefix.length - 1] + 1 + i]),
            ).flat();
      for (const other of all([0])) {
        expect(best).toBeLessThanOrEqual(Math.max(...stageMacs(c110, other, { draftRows: 4096 })) + 1e-6);
      }
    }
  });

  it('k = 2 may split inside a layer (attention in stage 1, MLP in stage 2) when that balances better', () => {
    const o = { draftRows: 4096 };
    expect(sublayerSplit(c110, 2, o)).toBe(7);
    const split = Math.max(...sublayerStageMacs(c110, 7, o));
    expect(split).toBeLessThan(Math.max(...stageMacs(c110, balancedBoundaries(c110, 2, o), o)));
    // the two parts add up to the whole model plus the draft head
    expect(sublayerStageMacs(c110, 7, o).reduce((a, b) => a + b)).toBeCloseTo(
      forwardMacs(c110) + 4096 * 768,
      3,
    );
    expect(sublayerSpecs(12, 7)).toEqual([
      { firstLayer: 0, endLayer: 8, skip: { attention: [], mlp: [7] } },
      { firstLayer: 7, endLayer: 12, skip: { attention: [7], mlp: [] } },
    ]);
    expect(sublayerSplit(c110, 2)).toBeUndefined(); // full heads: whole layers are already balanced
    expect(sublayerSplit(c110, 3, o)).toBeUndefined(); // k = 2 only
  });

  it('keeps a fixed exit layer, and equal layer counts on request', () => {
    expect(balancedBoundaries(c110, 3, { exitLayer: 2 })[1]).toBe(2);
    expect(planBoundaries(c110, 2, { draftRows: 4096, split: 'equal' })).toEqual([0, 6, 12]);
    expect(planBoundaries(c110, 2, { draftRows: 4096 })).toEqual([0, 7, 12]);
    expect(() => balancedBoundaries(c110, 13)).toThrow(/at least 13 layers/);
  });
});

describe('draft vocabulary subset', () => {
  it('ranks ids by frequency (ties and unseen ids by id) and returns them ascending', () => {
    expect(Array.from(frequencyRankedVocab([5, 5, 5, 2, 2, 7, 9, 9, 9, 9], 3, 10))).toEqual([2, 5, 9]);
    expect(Array.from(frequencyRankedVocab([4], 3, 10))).toEqual([0, 1, 4]);
    expect(() => frequencyRankedVocab([], 11, 10)).toThrow(/draft vocabulary size/);
  });

  it('gathers the classifier rows of the subset into the exit head', () => {
    const model = tinyModel();
    const vocab = Int32Array.of(1, 4, 9);
    const head = withDraftVocab(model, { afterLayer: 2 }, vocab);
    expect(head.vocab).toBe(vocab);
    expect(head.classifierRows?.rows).toBe(3);
    expect(head.classifierRows?.dtype).toBe(model.weights.classifier.dtype);
    for (const [i, t] of vocab.entries()) {
      expect(Array.from(denseRows(head.classifierRows!, i, i + 1))).toEqual(
        Array.from(denseRows(model.weights.classifier, t, t + 1)),
      );
    }
    // the whole vocabulary: no subset
    const all = Int32Array.from({ length: model.config.vocabSize }, (_, i) => i);
    expect(withDraftVocab(model, { afterLayer: 2 }, all).classifierRows).toBeUndefined();
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
      const emb = denseRows(model.weights.tokenEmbedding, token, token + 1);
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
