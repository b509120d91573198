/**
 * Per-generation options through `Engine.generate` on the real stories260K package: the pipeline depth
 * (`stages`) and the block length (`draftLength`) change what runs and the stats say so; options a
 * decoder would not honour are refused before any work; logprobs come with every token event, spelled
 * by the tokenizer, with offsets into the completion text.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureStoriesPackage } from '../../infra/local/seed';
import { Engine } from '../../workers/engine/src/engine';
import type { TokenEvent } from '../../workers/engine/src/generate/generate';
import { scratchDir } from '../helpers/shared';

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let engine: Engine;
const PROMPT = 'Once upon a time';
const greedy = { maxTokens: 24, temperature: 0, topP: 1, seed: 0 };

beforeAll(async () => {
  scratch = await scratchDir();
  const pkg = await ensureStoriesPackage(path.join(scratch.dir, 'stories260K'));
  // a 3-device plan: pipelines of 2 (the default) or 3 stages
  engine = await Engine.open(pkg, { devices: ['cpu', 'cpu', 'cpu'], stages: 2 });
});

afterAll(async () => {
  await engine?.close();
  await scratch?.cleanup();
});

describe('Engine per-generation speculation settings', () => {
  it('runs the pipeline depth a generation asks for, up to one stage per device', async () => {
    expect(engine.maxStages).toBe(3);
    const ar = await engine.generate(PROMPT, { ...greedy, decoder: 'ar' });
    for (const decoder of ['ppsd', 'spd'] as const) {
      for (const stages of [2, 3]) {
        const r = await engine.generate(PROMPT, { ...greedy, decoder, stages });
        expect(r.tokens, `${decoder} k=${stages}`).toEqual(ar.tokens);
        expect(r.stats.stages).toHaveLength(stages);
        expect(r.stats.pipeline?.plan?.boundaries).toHaveLength(stages + 1);
      }
    }
  });

  it('runs a fixed draft block length a generation asks for', async () => {
    const ar = await engine.generate(PROMPT, { ...greedy, decoder: 'ar' });
    for (const decoder of ['eesd', 'dv'] as const) {
      const plain = await engine.generate(PROMPT, { ...greedy, decoder });
      expect(plain.stats.draftLength).toBe('adaptive');
      const r = await engine.generate(PROMPT, { ...greedy, decoder, draftLength: 2 });
      expect(r.tokens).toEqual(ar.tokens);
      expect(r.stats.draftLength).toBe(2);
      expect(r.stats.verifications).toBeGreaterThanOrEqual(Math.ceil(greedy.maxTokens / 3));
    }
  });

  it('refuses, before any work, what the decoder would not honour', () => {
    const bad = (params: Parameters<Engine['generate']>[1], msg: RegExp) =>
      expect(() => engine.generate(PROMPT, { ...greedy, ...params })).toThrow(msg);
    bad({ ...greedy, decoder: 'ppsd', stages: 4 }, /stages must be an integer in \[2, 3\]/);
    bad({ ...greedy, decoder: 'spd', stages: 1 }, /stages must be/);
    bad({ ...greedy, decoder: 'ar', stages: 2 }, /stages applies to the pipeline decoders/);
    bad({ ...greedy, decoder: 'eesd', stages: 2 }, /stages applies/);
    bad({ ...greedy, decoder: 'ppsd', draftLength: 3 }, /draftLength applies to the block drafters/);
    bad({ ...greedy, decoder: 'ar', logitBias: { 512: 1 } }, /outside the vocabulary \[0, 512\)/);
  });
});

describe('Engine logprobs', () => {
  it('come with every token event, one per id, spelled by the tokenizer, offsets into the text', async () => {
    const events: TokenEvent[] = [];
    const r = await engine.generate(PROMPT, { ...greedy, decoder: 'ppsd', logprobs: 2 }, (ev) => {
      events.push(ev);
    });
    const fromEvents = events.flatMap((e) => {
      expect(e.logprobs ?? []).toHaveLength(e.ids.length);
      return e.logprobs ?? [];
    });
    expect(fromEvents).toEqual(r.logprobs);
    expect(r.logprobs).toHaveLength(r.completionTokens);
    r.logprobs!.forEach((l, i) => {
      expect(l.token).toBe(
        engine.tokenizer.decode([5, r.tokens[i]]).slice(engine.tokenizer.decode([5]).length),
      );
      expect(l.bytes).toEqual(Array.from(new TextEncoder().encode(l.token)));
      expect(r.text.slice(l.offset, l.offset + l.token.length)).toBe(l.token);
      expect(l.top).toHaveLength(2);
      expect(l.logprob).toBeLessThanOrEqual(0);
    });
    const plain = await engine.generate(PROMPT, { ...greedy, decoder: 'ar' });
    expect(plain.logprobs).toBeUndefined();
  });

  it('spell control tokens by name', () => {
    const name = (id: number) => new TextDecoder().decode(engine.tokenizer.tokenBytes(id));
    expect([0, 1, 2].map(name)).toEqual(['<unk>', '<s>', '</s>']);
    expect(Array.from(engine.tokenizer.tokenBytes(3 + 0xe2))).toEqual([0xe2]);
  });
});
