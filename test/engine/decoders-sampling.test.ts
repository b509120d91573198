/**
 * Sampling losslessness, statistically: on a tiny model (vocab 8) each decoder's distribution of the
 * first three tokens must match AR's exact distribution (computed from the float64 reference forward):
 * a chi-square goodness-of-fit test at p = 0.001 on the joint (t1, t2) (64 cells) and on the marginal of
 * t3, over 1500 generations with fixed seeds (so the outcome is deterministic). Cells expected below 5
 * are pooled. A negative control shows the test has power: tokens drawn from the exit head's own
 * distribution (drafts without the acceptance rule) fail it. The same with logit_bias and presence /
 * frequency penalties: the target distribution at each position is AR's processed one (penalised with
 * the completion up to that position), and the unprocessed distribution fails the test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decoder, DecoderName } from '../../workers/engine/src/decode/decoder';
import { createDecoder, type DecoderContext } from '../../workers/engine/src/decode/index';
import { Sampler } from '../../workers/engine/src/decode/sampling';
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import { referenceForward } from '../../workers/engine/src/model/reference';
import { generate, tinyModel } from './decoder-helpers';

const V = 8;
const RUNS = 1500;
const PROMPT = [1, 3, 5];
const SAMPLING = { temperature: 0.9, topP: 0.95 };

/** Upper 0.001 quantile of chi-square with df degrees of freedom (Wilson-Hilferty). */
function chi2Critical(df: number): number {
  const z = 3.0902;
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

/** Chi-square statistic and critical value of observed counts against expected probabilities. */
function chiSquare(observed: number[], probs: number[], n: number): { stat: number; critical: number } {
  let stat = 0;
  let cells = 0;
  let pooledObs = 0;
  let pooledExp = 0;
  probs.forEach((p, i) => {
    const e = p * n;
    if (e >= 5) {
      stat += (observed[i] - e) ** 2 / e;
      cells++;
    } else {
      pooledObs += observed[i];
      pooledExp += e;
    }
  });
  if (pooledExp > 0) {
    stat += (pooledObs - pooledExp) ** 2 / Math.max(pooledExp, 1e-9);
    cells++;
  }
  return { stat, critical: chi2Critical(Math.max(1, cells - 1)) };
}

/** Strong processors for the vocab-8 model: a banned token, a favoured one, repeats penalised. */
const PROCESSORS = {
  logitBias: new Map([
    [2, -100],
    [5, 1],
  ]),
  presencePenalty: 0.8,
  frequencyPenalty: 0.6,
};

/**
 * Exact distributions of the first three tokens under the sampler's transform of `logitsOf` (with
 * `processors`, the completion so far penalised as OpenAI defines it).
 */
function exactDistributions(
  logitsOf: (tokens: number[]) => ArrayLike<number>,
  processors: Partial<typeof PROCESSORS> = {},
) {
  const dist = (tokens: number[]) => {
    const s = new Sampler({ ...SAMPLING, ...processors, seed: 0 });
    for (const t of tokens.slice(PROMPT.length)) s.record([], t); // the completion's counts
    return s.distribution(logitsOf(tokens));
  };
  const joint = new Array(V * V).fill(0);
  const third = new Array(V).fill(0);
  const p1 = dist(PROMPT);
  for (let a = 0; a < V; a++) {
    if (p1[a] === 0) continue;
    const p2 = dist([...PROMPT, a]);
    for (let b = 0; b < V; b++) {
      const pab = p1[a] * p2[b];
      joint[a * V + b] = pab;
      if (pab === 0) continue;
      const p3 = dist([...PROMPT, a, b]);
      for (let c = 0; c < V; c++) third[c] += pab * p3[c];
    }
  }
  return { joint, third };
}

function samplingSuite(
  label: string,
  processors: Partial<typeof PROCESSORS>,
  only?: (name: string) => boolean,
) {
  describe(label, () => {
    let model: LlamaModel;
    let exact: { joint: number[]; third: number[] };
    let arTokens: number[];
    const targetLogits = (tokens: number[]) => referenceForward(model, tokens).logits[tokens.length - 1];
    beforeAll(() => {
      model = tinyModel({ vocabSize: V, seed: 21 });
      exact = exactDistributions(targetLogits, processors);
    });

    function check(samples: number[][]) {
      const joint = new Array(V * V).fill(0);
      const third = new Array(V).fill(0);
      for (const s of samples) {
        joint[s[0] * V + s[1]]++;
        third[s[2]]++;
      }
      return {
        joint: chiSquare(joint, exact.joint, samples.length),
        third: chiSquare(third, exact.third, samples.length),
      };
    }

    it('negative control: drafts from the exit head alone (no acceptance rule) fail the test', () => {
      const exitLayer = 2;
      const draft = exactDistributions(
        (tokens) =>
          referenceForward(model, tokens, { exit: { afterLayer: exitLayer } }).exitLogits![tokens.length - 1],
        processors,
      );
      // Draw from the draft's own joint distribution and test it against AR's.
      const sampler = new Sampler({ ...SAMPLING, seed: 99 });
      const samples: number[][] = [];
      const jointQ = Float64Array.from(draft.joint);
      const thirdQ = Float64Array.from(draft.third);
      for (let i = 0; i < RUNS; i++) {
        const ab = sampler.draw(jointQ);
        samples.push([Math.floor(ab / V), ab % V, sampler.draw(thirdQ)]);
      }
      const r = check(samples);
      expect(r.joint.stat).toBeGreaterThan(r.joint.critical);
    });

    if (processors.logitBias) {
      it('negative control: the unprocessed AR distribution fails the test', () => {
        const plain = exactDistributions(targetLogits);
        const sampler = new Sampler({ ...SAMPLING, seed: 98 });
        const jointQ = Float64Array.from(plain.joint);
        const thirdQ = Float64Array.from(plain.third);
        const samples = Array.from({ length: RUNS }, () => {
          const ab = sampler.draw(jointQ);
          return [Math.floor(ab / V), ab % V, sampler.draw(thirdQ)];
        });
        const r = check(samples);
        expect(r.joint.stat + r.third.stat).toBeGreaterThan(r.joint.critical + r.third.critical);
      });
    }

    const cases: {
      name: string;
      decoder: DecoderName;
      ctx: Omit<DecoderContext, 'model'>;
      controlled?: boolean;
    }[] = [
      { name: 'ar', decoder: 'ar', ctx: {} },
      { name: 'eesd adaptive (E=2)', decoder: 'eesd', ctx: { exitLayer: 2 } },
      { name: 'eesd fixed gamma 3 (E=1)', decoder: 'eesd', ctx: { exitLayer: 1, draftLength: 3 } },
      { name: 'dv adaptive exit', decoder: 'dv', ctx: { skipSet: { attention: [1, 2], mlp: [2] } } },
      { name: 'ppsd k=2', decoder: 'ppsd', ctx: { stages: 2 } },
      { name: 'ppsd k=3', decoder: 'ppsd', ctx: { stages: 3 } },
      {
        name: 'ppsd k=2, draft head over a vocabulary subset (q zero elsewhere)',
        decoder: 'ppsd',
        ctx: { stages: 2, draftVocab: Int32Array.of(0, 1, 3, 4, 6, 9, 10, 14) },
      },
      { name: 'spd k=2', decoder: 'spd', ctx: { stages: 2 } },
      {
        name: 'ppsd k=2, controlled acceptance 0.5 (forced drafts, one-hot q)',
        decoder: 'ppsd',
        ctx: { stages: 2 },
        controlled: true,
      },
    ];

    let decoders: Decoder[] = [];
    afterAll(async () => {
      await Promise.all(decoders.map((d) => d.close()));
      decoders = [];
    });

    it.each(cases.filter((c) => only?.(c.name) ?? true).map((c) => [c.name, c] as const))(
      '%s',
      async (_n, c) => {
        const decoder = await createDecoder(c.decoder, { model, ...c.ctx });
        decoders.push(decoder);
        arTokens ??= [2, 4, 6, 1, 3];
        const samples: number[][] = [];
        let proposed = 0;
        let accepted = 0;
        for (let seed = 0; seed < RUNS; seed++) {
          const sampler = new Sampler({ ...SAMPLING, ...processors, seed: 1000 + seed });
          const controlledAcceptance = c.controlled ? { alpha: 0.5, seed, arTokens } : undefined;
          const g = await generate(decoder, PROMPT, 3, { sampler, controlledAcceptance });
          samples.push(g.tokens);
          proposed += g.stats.draftTokensProposed;
          accepted += g.stats.draftTokensAccepted;
        }
        const r = check(samples);
        expect(r.joint.stat, 'joint (t1, t2)').toBeLessThan(r.joint.critical);
        expect(r.third.stat, 'marginal t3').toBeLessThan(r.third.critical);
        if (c.decoder !== 'ar') {
          // Both branches of the rule ran: some drafts accepted, some rejected and resampled.
          expect(accepted).toBeGreaterThan(0);
          expect(accepted).toBeLessThan(proposed);
        }
      },
    );
  });
}

samplingSuite('sampling: every decoder draws from the AR distribution', {});
// one case per decoding loop (AR, block, pipeline with either drafter): the rule is shared, the
// processed rows are what differs
samplingSuite(
  'sampling with logit_bias and penalties: every decoder draws from the processed AR distribution',
  PROCESSORS,
  (name) => ['ar', 'eesd fixed gamma 3 (E=1)', 'dv adaptive exit', 'ppsd k=2', 'spd k=2'].includes(name),
);
