import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { exitAgreement } from '../../workers/engine/src/calibrate/agreement';
import {
  collectHiddenStates,
  ROW_GREEDY,
  ROW_TEACHER,
  rowMask,
  splitCorpus,
} from '../../workers/engine/src/calibrate/data';
import { distillLossAndGrad, targetDistribution } from '../../workers/engine/src/calibrate/distill';
import { autoExitLayer, expectedSpeedup, fitExitHeads } from '../../workers/engine/src/calibrate/exit-heads';
import { HiddenStateModel, headLogits } from '../../workers/engine/src/calibrate/forward';
import { cholesky, choleskySolve } from '../../workers/engine/src/calibrate/linalg';
import { fitAffine } from '../../workers/engine/src/calibrate/lsq';
import { searchSkipSet, skipKey } from '../../workers/engine/src/calibrate/skip-search';
import { spdFeatures, toSpdWeights } from '../../workers/engine/src/calibrate/spd';
import { spdDraftHidden } from '../../workers/engine/src/decode/spd-drafter';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import { fillNormal, llamaConfig, randomLlama, uniformRng } from '../../workers/engine/src/model/random';
import { referenceForward } from '../../workers/engine/src/model/reference';
import { readLlama2cTokenizer } from '../../workers/engine/src/tokenizer/llama2c';

const SHARED = path.resolve(import.meta.dirname, '../../../shared');

function tinyModel(): LlamaModel {
  return randomLlama(
    llamaConfig({ dim: 16, nLayers: 3, nHeads: 4, nKvHeads: 2, vocabSize: 24, hiddenDim: 40, maxSeqLen: 32 }),
    7,
    {
      std: 0.3,
    },
  );
}

describe('linear algebra', () => {
  it('Cholesky solves a symmetric positive-definite system', () => {
    const n = 5;
    const rand = uniformRng(3);
    const m = fillNormal(new Float32Array(n * n), rand, 1);
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let s = i === j ? 0.5 : 0;
        for (let t = 0; t < n; t++) s += m[i * n + t] * m[j * n + t];
        a[i * n + j] = s;
      }
    const x = Float64Array.from({ length: n * 2 }, (_, i) => i - 3);
    const b = new Float64Array(n * 2);
    for (let i = 0; i < n; i++)
      for (let c = 0; c < 2; c++) for (let j = 0; j < n; j++) b[i * 2 + c] += a[i * n + j] * x[j * 2 + c];
    const l = Float64Array.from(a);
    cholesky(l, n);
    choleskySolve(l, n, b, 2);
    for (let i = 0; i < x.length; i++) expect(b[i]).toBeCloseTo(x[i], 8);
  });

  it('least squares recovers a known affine map from noise-free samples', () => {
    const inDim = 6;
    const outDim = 4;
    const rand = uniformRng(11);
    const W = fillNormal(new Float32Array(outDim * inDim), rand, 1);
    const bias = fillNormal(new Float32Array(outDim), rand, 1);
    const rows = 200;
    const x = fillNormal(new Float32Array(rows * inDim), rand, 1);
    const y = new Float32Array(rows * outDim);
    for (let t = 0; t < rows; t++)
      for (let o = 0; o < outDim; o++) {
        let s = bias[o];
        for (let i = 0; i < inDim; i++) s += W[o * inDim + i] * x[t * inDim + i];
        y[t * outDim + o] = s;
      }
    const fit = fitAffine(x, y, rows, inDim, outDim, 1e-9);
    for (let i = 0; i < W.length; i++) expect(fit.weight[i]).toBeCloseTo(W[i], 3);
    for (let i = 0; i < bias.length; i++) expect(fit.bias[i]).toBeCloseTo(bias[i], 3);
  });
});

describe('calibration forward pass', () => {
  it('matches the float64 reference at every layer, across blocks', () => {
    const model = tinyModel();
    const tokens = [1, 5, 9, 3, 17, 22, 4];
    const hm = new HiddenStateModel(model, 16);
    const a = hm.forward(tokens.slice(0, 4));
    const b = hm.forward(tokens.slice(4));
    const { dim, nLayers } = model.config;
    for (let l = 1; l <= nLayers; l++) {
      const ref = referenceForward(model, tokens, l < nLayers ? { exit: { afterLayer: l } } : {});
      const rows = l < nLayers ? ref.exitHidden! : ref.hidden;
      tokens.forEach((_, t) => {
        const block = t < 4 ? a : b;
        const r = t < 4 ? t : t - 4;
        for (let i = 0; i < dim; i++) expect(block.hidden[l][r * dim + i]).toBeCloseTo(rows[t][i], 4);
      });
    }
    const logits = headLogits(model, b.hidden[nLayers], b.rows);
    const ref = referenceForward(model, tokens);
    for (let v = 0; v < model.config.vocabSize; v++)
      expect(logits[2 * model.config.vocabSize + v]).toBeCloseTo(ref.logits[6][v], 4);
  });
});

describe('distillation loss', () => {
  it('its hand-written gradient matches finite differences', () => {
    const model = tinyModel();
    const { dim, vocabSize: V } = model.config;
    const rand = uniformRng(5);
    const rows = 6;
    const x = fillNormal(new Float32Array(rows * dim), rand, 1);
    const head = {
      weight: fillNormal(new Float32Array(dim * dim), rand, 0.4),
      bias: fillNormal(new Float32Array(dim), rand, 0.2),
    };
    const logits = fillNormal(new Float32Array(rows * V), rand, 2);
    for (const opts of [{ ceWeight: 0 }, { ceWeight: 0.5, temperature: 1.7 }]) {
      const { probs, hard } = targetDistribution(logits, rows, V, opts.temperature ?? 1);
      const g = distillLossAndGrad(model, head, x, dim, probs, hard, rows, opts);
      const loss = () => distillLossAndGrad(model, head, x, dim, probs, hard, rows, opts).loss;
      const h = 1e-2;
      for (const [arr, grad, idx] of [
        [head.weight, g.gradWeight, [0, 17, 100, dim * dim - 1]],
        [head.bias, g.gradBias, [0, 3, dim - 1]],
      ] as const) {
        for (const i of idx) {
          const keep = arr[i];
          arr[i] = keep + h;
          const up = loss();
          arr[i] = keep - h;
          const down = loss();
          arr[i] = keep;
          const numeric = (up - down) / (2 * h);
          expect(Math.abs(numeric - grad[i])).toBeLessThan(2e-3 + 2e-2 * Math.abs(numeric));
        }
      }
    }
  });
});

describe('exit heads on stories260K', () => {
  it('a head fitted on a small slice beats the logit lens on held-out text', async () => {
    const model = await readLlama2c(path.join(SHARED, 'models/stories260K/stories260K.bin'));
    const tok = await readLlama2cTokenizer(path.join(SHARED, 'models/stories260K/tok512.bin'));
    const split = splitCorpus(readFileSync(path.join(SHARED, 'corpus/tinystories-val.txt'), 'utf8'));
    expect(split.fit.length).toBeGreaterThan(split.heldOut.length);
    const fit = collectHiddenStates(model, tok, split.fit, { teacherRows: 1500, greedySequences: 12 });
    const held = collectHiddenStates(model, tok, split.heldOut, {
      teacherRows: 300,
      greedySequences: 10,
      greedyTokens: 24,
    });
    expect(rowMask(held, ROW_GREEDY).reduce((a, x) => a + x, 0)).toBe(10 * 25); // the last prefix row + one row per continuation token
    expect(rowMask(held, ROW_TEACHER).reduce((a, x) => a + x, 0)).toBeGreaterThan(0);
    const results = fitExitHeads(model, fit, held, { layers: [2, 3], distill: { epochs: 1, ceWeight: 0.5 } });
    for (const r of results) {
      expect(r.lsq).toBeGreaterThan(r.lens);
      expect(r.distilled!).toBeGreaterThan(r.lens);
      // the same measure through the public helper
      expect(exitAgreement(model, held, r.layer, undefined).rate).toBe(r.lens);
    }
    const E = autoExitLayer(results, model.config.nLayers, 2);
    expect([2, 3]).toContain(E);
  }, 180_000);
});

describe('exit layer choice', () => {
  it('expected speedup uses the deepest stage of the plan', () => {
    // N = 12, k = 2, E = 6: even stages -> the design note's formula
    expect(expectedSpeedup(12, 2, 6, 0.8)).toBeCloseTo(2 / (0.8 + 0.2 * 2), 10);
    // N = 5, E = 3: the tick is 3 layers, AR is 5
    expect(expectedSpeedup(5, 2, 3, 0.5)).toBeCloseTo((5 / 3 / 2) * (2 / 1.5), 10);
    expect(expectedSpeedup(5, 4, 3, 0.5)).toBeUndefined(); // 2 layers left for 3 stages
  });
});

describe('SPD drafter features', () => {
  it('takes lagged rows inside a sequence and zeros before its start; blocks reassemble the map', () => {
    const dim = 2;
    const N = 3;
    const rows = 4; // one sequence, positions 0..3
    const hidden = Array.from({ length: N + 1 }, (_, l) =>
      Float32Array.from({ length: rows * dim }, (_, i) => 100 * l + i),
    );
    const data = {
      rows,
      dim,
      nLayers: N,
      hidden,
      tokens: new Int32Array(rows),
      pos: Int32Array.of(0, 1, 2, 3),
      target: new Int32Array(rows),
      kind: new Uint8Array(rows),
    };
    const x = spdFeatures(data, [1, 3], [1, 2]);
    const width = 3 * dim;
    // row 2: emb row 2, depth-1 of row 1, depth-3 of row 0
    expect(Array.from(x.subarray(2 * width, 3 * width))).toEqual([4, 5, 102, 103, 300, 301]);
    // row 0: no earlier tokens
    expect(Array.from(x.subarray(0, width))).toEqual([0, 1, 0, 0, 0, 0]);
    const rand = uniformRng(9);
    const map = {
      weight: fillNormal(new Float32Array(dim * width), rand, 1),
      bias: Float32Array.of(0.5, -0.5),
    };
    const w = toSpdWeights(map, [1, 3], dim);
    const row = x.subarray(2 * width, 3 * width);
    const h = spdDraftHidden(w, row.subarray(0, dim), [row.subarray(dim, 2 * dim), row.subarray(2 * dim)]);
    for (let o = 0; o < dim; o++) {
      let s = map.bias[o];
      for (let i = 0; i < width; i++) s += map.weight[o * width + i] * row[i];
      expect(h[o]).toBeCloseTo(s, 4);
    }
  });
});

describe('skip-set search', () => {
  it('greedily adds the sub-layers that raise the measured objective and stops when none helps', async () => {
    // a made-up objective: skipping attention 1 and mlp 2 helps, anything else hurts
    const good = new Set(['attention:1', 'mlp:2']);
    const evaluate = async (s: { attention: number[]; mlp: number[] }) => {
      let speedup = 1;
      for (const l of s.attention) speedup += good.has(`attention:${l}`) ? 0.2 : -0.3;
      for (const l of s.mlp) speedup += good.has(`mlp:${l}`) ? 0.1 : -0.3;
      return { speedup, tokensPerSecond: 100 * speedup, acceptance: 0.5 };
    };
    const { best, tried } = await searchSkipSet(evaluate, { nLayers: 5, maxEvaluations: 50 });
    expect(skipKey(best.skip)).toBe('attn[1] mlp[2]');
    expect(best.speedup).toBeCloseTo(1.3, 10);
    expect(tried.length).toBeLessThanOrEqual(50);
    const capped = await searchSkipSet(evaluate, { nLayers: 5, maxEvaluations: 3 });
    expect(capped.tried.length).toBe(3);
  });
});
