/**
 * The real stories260K checkpoint (llama2.c format, read by formats/llama2c.ts): ORT stages vs the
 * float64 reference for every split of its 5 layers, and greedy decoding agrees token for token.
 * Skipped when ../shared is not present.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import { referenceForward } from '../../workers/engine/src/model/reference';
import type { Stage } from '../../workers/engine/src/model/stage';
import { pipelineForward, relErr, row, StagePool, splits } from './runtime-helpers';

const BIN = resolve(__dirname, '../../../shared/models/stories260K/stories260K.bin');

const argmax = (a: ArrayLike<number>): number => {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
};

describe.skipIf(!existsSync(BIN))('stories260K', () => {
  let model: LlamaModel;
  let pool: StagePool;
  beforeAll(async () => {
    model = await readLlama2c(BIN);
    pool = new StagePool(model, 64);
  });
  afterAll(async () => {
    await pool?.releaseAll();
  });

  it('every stage split matches the float64 reference (prefill, then single steps)', async () => {
    const c = model.config;
    expect(c.nLayers).toBe(5);
    // a prompt from BOS plus a greedy continuation of the reference itself
    const tokens = [c.bosId, 403, 261, 359, 306];
    for (let i = 0; i < 6; i++) {
      const ref = referenceForward(model, tokens);
      tokens.push(argmax(ref.logits[tokens.length - 1]));
    }
    const ref = referenceForward(model, tokens);
    for (const parts of splits(c.nLayers)) {
      const stages: Stage[] = [];
      for (const [a, b] of parts) {
        const s = await pool.get({ firstLayer: a, endLayer: b });
        s.truncate(0);
        stages.push(s);
      }
      const prefill = 5;
      const out = await pipelineForward(stages, tokens.slice(0, prefill));
      for (let t = 0; t < prefill; t++) {
        expect(
          relErr(row(out.logits, t, c.vocabSize), ref.logits[t]),
          `split ${JSON.stringify(parts)}`,
        ).toBeLessThan(1e-4);
      }
      for (let p = prefill; p < tokens.length; p++) {
        const step = await pipelineForward(stages, [tokens[p]]);
        expect(
          relErr(step.logits, ref.logits[p]),
          `split ${JSON.stringify(parts)} position ${p}`,
        ).toBeLessThan(1e-4);
        expect(argmax(step.logits)).toBe(argmax(ref.logits[p]));
      }
    }
  });

  it('exit heads at every layer match the reference', async () => {
    const c = model.config;
    const tokens = [c.bosId, 403, 261, 359, 306, 280, 310];
    for (let e = 1; e < c.nLayers; e++) {
      const ref = referenceForward(model, tokens, { exit: { afterLayer: e } });
      const stages = [
        await pool.get({ firstLayer: 0, endLayer: e, exit: { afterLayer: e } }),
        await pool.get({ firstLayer: e, endLayer: c.nLayers }),
      ];
      for (const s of stages) s.truncate(0);
      const out = await pipelineForward(stages, tokens);
      for (let t = 0; t < tokens.length; t++) {
        expect(relErr(row(out.exitLogits!, t, c.vocabSize), ref.exitLogits![t])).toBeLessThan(1e-4);
        expect(relErr(row(out.logits, t, c.vocabSize), ref.logits[t])).toBeLessThan(1e-4);
      }
    }
  });
});
