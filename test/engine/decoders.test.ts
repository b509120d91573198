/**
 * Greedy losslessness: every speculative decoder returns token for token what AR returns, for several
 * prompts, pipeline depths, draft-length policies, exit heads (plain logit lens: low acceptance, so
 * rejections and flushes are exercised) and controlled acceptance alpha in {0, 0.5, 1}.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decoder } from '../../workers/engine/src/decode/decoder';
import { createDecoder, type DecoderContext } from '../../workers/engine/src/decode/index';
import { stageBoundaries } from '../../workers/engine/src/decode/pipeline';
import { type SpdDrafterWeights, spdFeatureLags } from '../../workers/engine/src/decode/spd-drafter';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import { convertModel, type ExitHead, type LlamaModel } from '../../workers/engine/src/model/llama';
import { fillNormal, uniformRng } from '../../workers/engine/src/model/random';
import { checkStats, generate, STORIES260K, tinyModel } from './decoder-helpers';

interface Case {
  name: string;
  decoder: 'eesd' | 'dv' | 'ppsd' | 'spd';
  /** Built once the model is loaded (heads and drafters depend on its shape). */
  ctx: (model: LlamaModel) => Omit<DecoderContext, 'model'>;
  stages?: number; // stage times expected in stats
}

/** An affine exit head near the identity (a stand-in for a fitted one). */
function affineHead(model: LlamaModel, afterLayer: number, seed: number): ExitHead {
  const dim = model.config.dim;
  const weight = fillNormal(new Float32Array(dim * dim), uniformRng(seed), 0.05);
  for (let i = 0; i < dim; i++) weight[i * dim + i] += 1;
  return {
    afterLayer,
    affine: { weight, bias: fillNormal(new Float32Array(dim), uniformRng(seed + 1), 0.05) },
  };
}

/** A random "fitted" SPD drafter over every in-flight depth plus the final layer (depth N). */
function randomSpdDrafter(model: LlamaModel, k: number, seed: number): SpdDrafterWeights {
  const { dim, nLayers } = model.config;
  const b = stageBoundaries(nLayers, k);
  const depths = b.slice(1);
  const rand = uniformRng(seed);
  const mat = () => fillNormal(new Float32Array(dim * dim), rand, 0.5 / Math.sqrt(dim));
  spdFeatureLags(depths, b); // all boundaries
  return { depths, emb: mat(), byDepth: depths.map(mat), bias: fillNormal(new Float32Array(dim), rand, 0.1) };
}

function suite(
  label: string,
  load: () => Promise<LlamaModel>,
  prompts: number[][],
  maxTokens: number,
  cases: Case[],
) {
  describe(label, () => {
    let model: LlamaModel;
    let ar: Decoder;
    const expected: number[][] = [];
    beforeAll(async () => {
      model = await load();
      ar = await createDecoder('ar', { model });
      for (const p of prompts) expected.push((await generate(ar, p, maxTokens)).tokens);
    });
    afterAll(async () => {
      await ar?.close();
    });

    it('AR continuations are non-trivial (the equality tests below mean something)', () => {
      for (const e of expected) {
        expect(e).toHaveLength(maxTokens);
        expect(new Set(e).size).toBeGreaterThan(2);
      }
    });

    it.each(cases.map((c) => [c.name, c] as const))(
      '%s equals AR (greedy), with controlled alpha 0 / 0.5 / 1',
      async (_n, c) => {
        const ctx = c.ctx(model);
        const decoder = await createDecoder(c.decoder, { model, ...ctx });
        try {
          let proposed = 0;
          let accepted = 0;
          for (const [j, prompt] of prompts.entries()) {
            const g = await generate(decoder, prompt, maxTokens);
            expect(g.tokens, `prompt ${j}`).toEqual(expected[j]);
            expect(checkStats(g, c.stages)).toEqual([]);
            proposed += g.stats.draftTokensProposed;
            accepted += g.stats.draftTokensAccepted;
          }
          expect(proposed).toBeGreaterThan(0);
          for (const alpha of [0, 0.5, 1]) {
            let prop = 0;
            let acc = 0;
            for (const [j, prompt] of prompts.entries()) {
              const controlledAcceptance = { alpha, seed: 11 + j, arTokens: expected[j] };
              const g = await generate(decoder, prompt, maxTokens, { controlledAcceptance });
              expect(g.tokens, `alpha ${alpha}, prompt ${j}`).toEqual(expected[j]);
              expect(checkStats(g, c.stages)).toEqual([]);
              prop += g.stats.draftTokensProposed;
              acc += g.stats.draftTokensAccepted;
            }
            if (alpha === 0) expect(acc).toBe(0);
            if (alpha === 1) expect(acc).toBe(prop);
            if (alpha === 0.5) expect(acc / prop).toBeGreaterThan(0.2);
            if (alpha === 0.5) expect(acc / prop).toBeLessThan(0.8);
          }
          // The uncontrolled logit-lens drafts must have been rejected sometimes (else flushes went untested).
          expect(accepted).toBeLessThan(proposed);
        } finally {
          await decoder.close();
        }
      },
    );
  });
}

suite(
  'tiny random model (4 layers, vocab 16)',
  async () => tinyModel(),
  [[1], [1, 5, 7], [1, 2, 3, 4, 5, 6, 9, 14]],
  24,
  [
    { name: 'eesd adaptive, E=2', decoder: 'eesd', ctx: () => ({ exitLayer: 2 }) },
    { name: 'eesd fixed gamma 3, E=1', decoder: 'eesd', ctx: () => ({ exitLayer: 1, draftLength: 3 }) },
    {
      name: 'eesd fixed gamma 5, affine head at 3',
      decoder: 'eesd',
      ctx: (m) => ({ exitHead: affineHead(m, 3, 5), draftLength: 5 }),
    },
    {
      name: 'dv adaptive exit, skip set',
      decoder: 'dv',
      ctx: () => ({ skipSet: { attention: [1, 2], mlp: [2] } }),
    },
    {
      name: 'dv fixed gamma 4, skip set',
      decoder: 'dv',
      ctx: () => ({ skipSet: { attention: [2], mlp: [1, 2] }, draftLength: 4 }),
    },
    { name: 'ppsd k=2', decoder: 'ppsd', ctx: () => ({ stages: 2 }), stages: 2 },
    { name: 'ppsd k=2, equal split', decoder: 'ppsd', ctx: () => ({ stages: 2, split: 'equal' }), stages: 2 },
    {
      name: 'ppsd k=2, draft head over a 6-token vocabulary subset',
      decoder: 'ppsd',
      ctx: () => ({ stages: 2, draftVocab: Int32Array.of(0, 2, 3, 5, 8, 13) }),
      stages: 2,
    },
    {
      name: 'ppsd k=3, affine head over a vocabulary subset',
      decoder: 'ppsd',
      ctx: (m) => ({
        stages: 3,
        exitHead: affineHead(m, 2, 3),
        draftVocab: Int32Array.of(1, 4, 6, 7, 11, 12, 15),
      }),
      stages: 3,
    },
    { name: 'ppsd k=3', decoder: 'ppsd', ctx: () => ({ stages: 3 }), stages: 3 },
    {
      name: 'ppsd k=4, affine head',
      decoder: 'ppsd',
      ctx: (m) => ({ stages: 4, exitHead: affineHead(m, 1, 9) }),
      stages: 4,
    },
    { name: 'spd k=2, identity drafter', decoder: 'spd', ctx: () => ({ stages: 2 }), stages: 2 },
    {
      name: 'spd k=3, drafter with the final-layer feature',
      decoder: 'spd',
      ctx: (m) => ({ stages: 3, spdDrafter: randomSpdDrafter(m, 3, 4) }),
      stages: 3,
    },
  ],
);

suite(
  'stories260K (5 layers, vocab 512)',
  () => readLlama2c(STORIES260K),
  [[1], [1, 403, 261, 378, 275], [1, 66, 12, 350, 290, 400, 21, 83, 43, 410, 301]],
  40,
  [
    { name: 'eesd adaptive, E=3', decoder: 'eesd', ctx: () => ({ exitLayer: 3 }) },
    { name: 'eesd fixed gamma 4, E=1', decoder: 'eesd', ctx: () => ({ exitLayer: 1, draftLength: 4 }) },
    {
      name: 'dv adaptive exit, skip set',
      decoder: 'dv',
      ctx: () => ({ skipSet: { attention: [2, 3], mlp: [3] } }),
    },
    { name: 'ppsd k=2', decoder: 'ppsd', ctx: () => ({ stages: 2 }), stages: 2 },
    {
      name: 'ppsd k=2, draft head over the 128 lowest ids',
      decoder: 'ppsd',
      ctx: () => ({ stages: 2, draftVocab: Int32Array.from({ length: 128 }, (_, i) => i) }),
      stages: 2,
    },
    { name: 'ppsd k=3 (E=2)', decoder: 'ppsd', ctx: () => ({ stages: 3 }), stages: 3 },
    { name: 'ppsd k=5 (E=1)', decoder: 'ppsd', ctx: () => ({ stages: 5 }), stages: 5 },
    { name: 'spd k=2, identity drafter', decoder: 'spd', ctx: () => ({ stages: 2 }), stages: 2 },
    {
      name: 'spd k=5, drafter with the final-layer feature',
      decoder: 'spd',
      ctx: (m) => ({ stages: 5, spdDrafter: randomSpdDrafter(m, 5, 8) }),
      stages: 5,
    },
  ],
);

// Lossless is relative to the model as stored: the same decoders over stories260K quantized (its w2, with
// 172 inputs, keeps f32) equal that package's own AR output token for token.
for (const dtype of ['q4', 'q8'] as const) {
  suite(
    `stories260K stored as ${dtype}`,
    async () => convertModel(await readLlama2c(STORIES260K), dtype),
    [[1], [1, 403, 261, 378, 275]],
    32,
    [
      { name: 'eesd adaptive, E=3', decoder: 'eesd', ctx: () => ({ exitLayer: 3 }) },
      {
        name: 'dv adaptive exit, skip set',
        decoder: 'dv',
        ctx: () => ({ skipSet: { attention: [2, 3], mlp: [3] } }),
      },
      {
        name: 'ppsd k=2, draft head over the 128 lowest ids',
        decoder: 'ppsd',
        ctx: () => ({ stages: 2, draftVocab: Int32Array.from({ length: 128 }, (_, i) => i) }),
        stages: 2,
      },
      { name: 'ppsd k=3 (E=2)', decoder: 'ppsd', ctx: () => ({ stages: 3 }), stages: 3 },
      {
        name: 'spd k=2, drafter with the final-layer feature',
        decoder: 'spd',
        ctx: (m) => ({ stages: 2, spdDrafter: randomSpdDrafter(m, 2, 8) }),
        stages: 2,
      },
    ],
  );
}
