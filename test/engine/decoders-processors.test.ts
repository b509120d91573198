/**
 * Logit processors and logprobs under every decoder, greedy: with logit_bias, presence and frequency
 * penalties every speculative decoder returns token for token what AR returns with the same processors,
 * and both equal an independent float64 loop (referenceForward + OpenAI's formula, the penalty from the
 * completion up to each position). So inside a verified block each row is penalised with the tokens
 * before it, not with the block's start. Logprobs are the full model's raw log_softmax: the same under
 * every decoder (within float tolerance) and equal to the float64 reference's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decoder, DecoderName } from '../../workers/engine/src/decode/decoder';
import { createDecoder, type DecoderContext } from '../../workers/engine/src/decode/index';
import { Sampler, type SamplingOptions } from '../../workers/engine/src/decode/sampling';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import { referenceForward } from '../../workers/engine/src/model/reference';
import { generate, STORIES260K, tinyModel } from './decoder-helpers';

interface Processors {
  logitBias: Map<number, number>;
  presencePenalty: number;
  frequencyPenalty: number;
}

/** Greedy decoding in float64 with OpenAI's processors, written out independently of the Sampler. */
function referenceGreedy(model: LlamaModel, prompt: number[], n: number, proc: Processors) {
  const seq = [...prompt];
  const counts = new Map<number, number>();
  const tokens: number[] = [];
  const logprobs: number[] = [];
  for (let i = 0; i < n; i++) {
    const raw = referenceForward(model, seq).logits[seq.length - 1];
    const adjusted = Array.from(raw, (x, id) => {
      const c = counts.get(id) ?? 0;
      const penalty = c > 0 ? proc.presencePenalty + c * proc.frequencyPenalty : 0;
      return x + (proc.logitBias.get(id) ?? 0) - penalty;
    });
    const tok = adjusted.indexOf(Math.max(...adjusted));
    const max = Math.max(...raw);
    const logZ = max + Math.log(raw.reduce((s, x) => s + Math.exp(x - max), 0));
    tokens.push(tok);
    logprobs.push(raw[tok] - logZ);
    counts.set(tok, (counts.get(tok) ?? 0) + 1);
    seq.push(tok);
  }
  return { tokens, logprobs };
}

const greedyWith = (proc: Partial<SamplingOptions>) =>
  new Sampler({ temperature: 0, topP: 1, seed: 0, logprobs: 3, ...proc });

interface Case {
  name: string;
  decoder: DecoderName;
  ctx: Omit<DecoderContext, 'model'>;
  /** A per-request fixed draft length (block drafters). */
  draftLength?: number;
}

function suite(
  label: string,
  load: () => Promise<LlamaModel> | LlamaModel,
  prompt: number[],
  maxTokens: number,
  /** Picks the processors from the unprocessed AR output, so they are sure to change it. */
  processorsFor: (plain: number[]) => Processors,
  cases: Case[],
) {
  describe(label, () => {
    let model: LlamaModel;
    let proc: Processors;
    let expected: { tokens: number[]; logprobs: number[] };
    const decoders: Decoder[] = [];
    beforeAll(async () => {
      model = await load();
      const ar = await createDecoder('ar', { model });
      decoders.push(ar);
      const plain = (await generate(ar, prompt, maxTokens)).tokens;
      proc = processorsFor(plain);
      expected = referenceGreedy(model, prompt, maxTokens, proc);
      expect(expected.tokens).not.toEqual(plain); // the processors matter here
    });
    afterAll(async () => {
      await Promise.all(decoders.map((d) => d.close()));
    });

    it.each(cases.map((c) => [c.name, c] as const))(
      '%s: the float64 reference tokens and logprobs',
      async (_n, c) => {
        const decoder = await createDecoder(c.decoder, { model, ...c.ctx });
        decoders.push(decoder);
        const sampler = greedyWith(proc);
        const g = await generate(decoder, prompt, maxTokens, { sampler, draftLength: c.draftLength });
        expect(g.tokens).toEqual(expected.tokens);
        expect(sampler.logprobs.map((l) => l.id)).toEqual(expected.tokens);
        sampler.logprobs.forEach((l, i) => {
          expect(l.logprob).toBeCloseTo(expected.logprobs[i], 4);
          expect(l.top).toHaveLength(3);
          expect(l.top[0].logprob).toBeGreaterThanOrEqual(l.logprob - 1e-9); // raw, not processed
        });
        if (c.decoder !== 'ar') expect(g.stats.draftTokensProposed).toBeGreaterThan(0);
        if (c.draftLength !== undefined) {
          expect(g.stats.draftLength).toBe(c.draftLength);
          // no block is longer than draftLength drafts + 1 target token
          expect(g.stats.verifications).toBeGreaterThanOrEqual(Math.ceil(maxTokens / (c.draftLength + 1)));
        }
      },
    );
  });
}

const CASES: Case[] = [
  { name: 'ar', decoder: 'ar', ctx: {} },
  { name: 'eesd adaptive, E=2', decoder: 'eesd', ctx: { exitLayer: 2 } },
  { name: 'eesd, per-request draft length 4', decoder: 'eesd', ctx: { exitLayer: 1 }, draftLength: 4 },
  { name: 'dv adaptive exit', decoder: 'dv', ctx: { skipSet: { attention: [1, 2], mlp: [2] } } },
  {
    name: 'dv, per-request draft length 3',
    decoder: 'dv',
    ctx: { skipSet: { attention: [2], mlp: [1] } },
    draftLength: 3,
  },
  { name: 'ppsd k=2', decoder: 'ppsd', ctx: { stages: 2 } },
  {
    name: 'ppsd k=3, draft head over a vocabulary subset',
    decoder: 'ppsd',
    ctx: { stages: 3, draftVocab: Int32Array.of(0, 2, 3, 5, 8, 13) },
  },
  { name: 'spd k=2', decoder: 'spd', ctx: { stages: 2 } },
];

/** Bans the plain output's most frequent token, favours another, and penalises repeats. */
function strongProcessors(plain: number[]): Processors {
  const freq = new Map<number, number>();
  for (const t of plain) freq.set(t, (freq.get(t) ?? 0) + 1);
  const [top] = [...freq.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0];
  return {
    logitBias: new Map([
      [top, -100],
      [(top + 1) % 16, 0.8],
    ]),
    presencePenalty: 0.6,
    frequencyPenalty: 0.4,
  };
}

suite('tiny random model (vocab 16)', () => tinyModel(), [1, 5, 7], 24, strongProcessors, CASES);
suite(
  'stories260K',
  () => readLlama2c(STORIES260K),
  [1, 403, 261, 378, 275],
  32,
  (plain) => ({ ...strongProcessors(plain), presencePenalty: 1.2, frequencyPenalty: 0.8 }),
  CASES.map((c) =>
    c.decoder === 'dv' ? { ...c, ctx: { skipSet: { attention: [2, 3], mlp: [3] } } } : c,
  ).map((c) =>
    c.ctx.draftVocab
      ? { ...c, ctx: { stages: 3, draftVocab: Int32Array.from({ length: 128 }, (_, i) => i) } }
      : c,
  ),
);
