/**
 * Stored precisions: each dtype's graphs against the float64 reference run on the *dequantized* weights,
 * every stage split, and the package round trip (quantize, manifest dtypes, load).
 *
 * Tolerance (per row, max|ort - ref| / max|ref|):
 * - f16 / bf16, and q8 / q4 at accuracy_level 0: 1e-4 (the weights are exact; f32 compute);
 * - q8 / q4 at accuracy_level 4 (the default): 6e-2 - activations are quantized to int8 per block of 32
 *   inside MatMulNBits (measured worst on these models: 2.2e-2).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AccuracyLevel } from '../../workers/engine/src/graph/weights';
import { convertModel, type LlamaModel, modelMatrices } from '../../workers/engine/src/model/llama';
import {
  dense,
  floatToBf16,
  floatToHalf,
  halfToFloat,
  type MatrixDtype,
  quantizeBlocks,
  stackRows,
} from '../../workers/engine/src/model/matrix';
import { llamaConfig, randomLlama, uniformRng } from '../../workers/engine/src/model/random';
import { referenceForward } from '../../workers/engine/src/model/reference';
import type { Stage } from '../../workers/engine/src/model/stage';
import { loadPackage, readManifest, writePackage } from '../../workers/engine/src/package';
import { createOrtStage } from '../../workers/engine/src/runtime';
import { MAX_BLOCK_ROWS } from '../../workers/engine/src/runtime/ort-stage';
import { pipelineForward, relErr, row, splits } from './runtime-helpers';

const TOK512 = path.resolve(import.meta.dirname, '../../../shared/models/stories260K/tok512.bin');

// dim and hidden are multiples of 32 (every matrix blockwise); `mixed` has hidden 40, so its w2 (40
// inputs) keeps the float dtype next to blockwise matrices.
const base = (hiddenDim: number, tied: boolean, seed: number) =>
  randomLlama(
    llamaConfig({
      dim: 64,
      nLayers: 3,
      nHeads: 4,
      nKvHeads: 2,
      hiddenDim,
      vocabSize: 48,
      maxSeqLen: 32,
      tiedEmbeddings: tied,
    }),
    seed,
    { std: 1 / 8, normNoise: 0.2 },
  );
const MODELS = { untied: base(96, false, 1), mixed: base(40, true, 2) };

const tolerance = (dtype: MatrixDtype, level: AccuracyLevel) =>
  (dtype === 'q8' || dtype === 'q4') && level === 4 ? 6e-2 : 1e-4;

const open: Stage[] = [];
afterAll(async () => {
  for (const s of open) await s.release();
});

/** Prefill 5 rows then 3 single steps through every split; returns the worst relative error. */
async function worstOverSplits(
  model: LlamaModel,
  level: AccuracyLevel,
  attention: 'fused' | 'standard',
): Promise<number> {
  const c = model.config;
  const r = uniformRng(9);
  const tokens = Array.from({ length: 8 }, () => Math.floor(r() * c.vocabSize));
  const ref = referenceForward(model, tokens);
  let worst = 0;
  for (const parts of splits(c.nLayers)) {
    const stages: Stage[] = [];
    for (const [a, b] of parts) {
      const s = await createOrtStage(
        model,
        { firstLayer: a, endLayer: b },
        { threads: 1, accuracyLevel: level, attention },
      );
      open.push(s);
      stages.push(s);
    }
    let pos = 0;
    for (const T of [5, 1, 1, 1]) {
      const out = await pipelineForward(stages, tokens.slice(pos, pos + T));
      for (let t = 0; t < T; t++)
        worst = Math.max(worst, relErr(row(out.logits, t, c.vocabSize), ref.logits[pos + t]));
      pos += T;
    }
  }
  return worst;
}

describe('quantized and 16-bit graphs match the float64 reference on the dequantized weights', () => {
  for (const [name, f32] of Object.entries(MODELS)) {
    for (const dtype of ['f16', 'bf16', 'q8', 'q4'] as const) {
      const levels: AccuracyLevel[] = dtype === 'q8' || dtype === 'q4' ? [0, 4] : [4];
      for (const level of levels) {
        it(`${name} ${dtype}, accuracy_level ${level}: every split, prefill then steps`, async () => {
          const model = convertModel(f32, dtype);
          const worst = await worstOverSplits(model, level, 'fused');
          expect(worst).toBeLessThan(tolerance(dtype, level));
          // the quantized model really is another model than the f32 one (the test can fail)
          if (dtype !== 'f16')
            expect(
              relErr(dense(model.weights.layers[0].wq), dense(f32.weights.layers[0].wq)),
            ).toBeGreaterThan(1e-4);
        });
      }
    }
    it(`${name} q4, standard-op attention (the WebGPU formulation, its own RoPE) on the CPU EP`, async () => {
      expect(await worstOverSplits(convertModel(f32, 'q4'), 0, 'standard')).toBeLessThan(1e-4);
    });
  }
});

describe('matrix storage', () => {
  it('q8 and q4 blocks follow llama.cpp Q8_0 / Q4_0 (f16 scales, nibble order, clamping)', () => {
    const x = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i * 1.7) * (i < 32 ? 1 : 0.01));
    const amax = Math.max(...Array.from(x.subarray(0, 32), Math.abs));
    const d = Math.fround(amax / 127); // codes use the f32 scale, the stored scale is its f16 rounding
    const q8 = quantizeBlocks(x, 1, 64, 'q8');
    expect(q8.scales[0]).toBe(halfToFloat(floatToHalf(d)));
    expect(Array.from(q8.codes.subarray(0, 32))).toEqual(
      Array.from(
        x.subarray(0, 32),
        (v) => Math.sign(v) * Math.round(Math.abs(Math.fround(v * Math.fround(1 / d)))) + 128,
      ),
    );
    const q4 = quantizeBlocks(x, 1, 64, 'q4');
    // the value of largest magnitude gets code 0 (d = max / -8); element 2i is the low nibble of byte i
    const big = Array.from(x.subarray(0, 32), Math.abs).indexOf(amax);
    const nibble = (i: number) => (i % 2 === 0 ? q4.codes[i >> 1] & 15 : q4.codes[i >> 1] >> 4);
    expect(nibble(big)).toBe(0);
    const back = dense(q4);
    for (let i = 0; i < 64; i++)
      expect(Math.abs(back[i] - x[i])).toBeLessThanOrEqual(Math.abs(q4.scales[i >> 5]) * 1.01);
  });

  it('16-bit conversions round to nearest even and come back exactly', () => {
    for (const v of [1, -2.5, 65504, 1e-7, 2.71, 0]) {
      expect(halfToFloat(floatToHalf(halfToFloat(floatToHalf(v))))).toBe(halfToFloat(floatToHalf(v)));
    }
    expect(halfToFloat(floatToHalf(1 + 2 ** -11))).toBe(1); // a tie rounds to even
    expect(halfToFloat(floatToHalf(1 + 3 * 2 ** -11))).toBe(1 + 2 ** -9);
    expect(floatToBf16(1 + 2 ** -8)).toBe(0x3f80); // tie to even
  });

  it('stacking rows keeps every value and refuses mixed storage', () => {
    const m = MODELS.untied;
    const q = convertModel(m, 'q4');
    const [a, b] = [q.weights.layers[0].w1, q.weights.layers[0].w3];
    const s = stackRows([a, b])!;
    expect(Array.from(dense(s))).toEqual([...dense(a), ...dense(b)]);
    const mixed = convertModel(MODELS.mixed, 'q4').weights.layers[0];
    expect(stackRows([mixed.w1, mixed.w2])).toBeUndefined(); // w2 (40 inputs) stayed f32
  });
});

describe('packages in every dtype', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  for (const dtype of ['f16', 'bf16', 'q8', 'q4'] as const) {
    it(`${dtype}: the manifest lists each matrix's dtype and the package loads back bit for bit`, async () => {
      const dir = await mkdtemp(path.join(tmpdir(), `ppsd-${dtype}-`));
      dirs.push(dir);
      const pkgDir = path.join(dir, 'pkg');
      const vocab512 = randomLlama(
        llamaConfig({ dim: 64, nLayers: 2, nHeads: 4, hiddenDim: 40, vocabSize: 512, maxSeqLen: 32 }),
        3,
      );
      const model = convertModel(vocab512, dtype);
      await writePackage(pkgDir, model, TOK512, { dtype });
      const manifest = await readManifest(pkgDir);
      expect(manifest.dtype).toBe(dtype);
      expect(manifest.tensors?.['model.layers.0.self_attn.q_proj.weight']?.dtype).toBe(dtype);
      // 40 inputs: no 32-blocking, so down_proj keeps f32 under a blockwise dtype, and says so
      const down = manifest.tensors?.['model.layers.0.mlp.down_proj.weight']?.dtype;
      expect(down).toBe(dtype === 'q8' || dtype === 'q4' ? 'f32' : dtype);
      const back = (await loadPackage(pkgDir)).model;
      for (const [i, { matrix }] of modelMatrices(back.weights).entries()) {
        const want = modelMatrices(model.weights)[i].matrix;
        expect(matrix.dtype).toBe(want.dtype);
        expect(Array.from(dense(matrix))).toEqual(Array.from(dense(want)));
      }
      const size = JSON.parse(await readFile(path.join(pkgDir, 'manifest.json'), 'utf8')).files[
        'weights.safetensors'
      ].bytes;
      expect(size).toBeGreaterThan(0);
    });
  }

  it('refuses a weights file whose matrix dtype differs from the manifest', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'ppsd-dtype-mismatch-'));
    dirs.push(dir);
    const m = randomLlama(llamaConfig({ dim: 32, nLayers: 1, nHeads: 2, vocabSize: 512, maxSeqLen: 16 }), 4);
    await writePackage(path.join(dir, 'a'), convertModel(m, 'q8'), TOK512, { dtype: 'q8' });
    const manifestPath = path.join(dir, 'a', 'manifest.json');
    const json = JSON.parse(await readFile(manifestPath, 'utf8'));
    json.tensors['model.layers.0.self_attn.q_proj.weight'] = { dtype: 'q4', blockSize: 32 };
    const { writeFile } = await import('node:fs/promises');
    await writeFile(manifestPath, JSON.stringify(json));
    await expect(loadPackage(path.join(dir, 'a'), { verify: false })).rejects.toThrow(
      /lists 'model.layers.0.self_attn.q_proj.weight' as .*q4.* but weights.safetensors holds .*q8/,
    );
  });
});

describe('long blocks run in chunks of MAX_BLOCK_ROWS', () => {
  it('a 300-row prompt (3 chunks) gives every row the reference logits, and the cache continues from it', async () => {
    const model = randomLlama(
      llamaConfig({
        dim: 64,
        nLayers: 2,
        nHeads: 4,
        nKvHeads: 2,
        hiddenDim: 96,
        vocabSize: 40,
        maxSeqLen: 320,
      }),
      5,
      { std: 1 / 8, normNoise: 0.2 },
    );
    const q4 = convertModel(model, 'q4');
    const r = uniformRng(3);
    const tokens = Array.from({ length: 302 }, () => Math.floor(r() * 40));
    const ref = referenceForward(q4, tokens);
    expect(MAX_BLOCK_ROWS).toBeLessThan(300);
    for (const level of [0, 4] as const) {
      const stage = await createOrtStage(
        q4,
        { firstLayer: 0, endLayer: 2 },
        { threads: 1, accuracyLevel: level },
      );
      open.push(stage);
      const out = await stage.forward({ tokens: Int32Array.from(tokens.slice(0, 300)) });
      expect(out.rows).toBe(300);
      expect(out.logits).toHaveLength(300 * 40);
      let worst = 0;
      for (let t = 0; t < 300; t++) worst = Math.max(worst, relErr(row(out.logits!, t, 40), ref.logits[t]));
      const last = await stage.forward({ tokens: Int32Array.from(tokens.slice(300)), logitRows: 1 });
      worst = Math.max(worst, relErr(last.logits!, ref.logits[301]));
      expect(worst, `accuracy_level ${level}`).toBeLessThan(tolerance('q4', level));
      expect(stage.length).toBe(302);
    }
  });
});
