/**
 * Lifecycle of every speculative decoder: a generation cancelled by AbortSignal or stopped by its
 * consumer leaves the decoder reusable (the next generation still equals AR); close() with a generation
 * in flight neither crashes the process nor hangs; stats add up.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decoder } from '../../workers/engine/src/decode/decoder';
import { createDecoder, type DecoderContext } from '../../workers/engine/src/decode/index';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import { checkStats, generate, generateAndStop, greedy, tinyModel } from './decoder-helpers';

const cases: [string, 'eesd' | 'dv' | 'ppsd' | 'spd', Omit<DecoderContext, 'model'>][] = [
  ['eesd', 'eesd', { exitLayer: 2 }],
  ['dv', 'dv', { skipSet: { attention: [1], mlp: [2] } }],
  ['ppsd k=2', 'ppsd', { stages: 2 }],
  ['spd k=3', 'spd', { stages: 3 }],
];

describe.each(cases)('%s lifecycle', (_name, name, ctx) => {
  const model = tinyModel();
  const prompt = [1, 4, 9, 2];
  let ar: Decoder;
  let decoder: Decoder;
  let expected: number[];
  beforeAll(async () => {
    ar = await createDecoder('ar', { model });
    expected = (await generate(ar, prompt, 30)).tokens;
    decoder = await createDecoder(name, { model, ...ctx });
  });
  afterAll(async () => {
    await Promise.all([ar?.close(), decoder?.close()]);
  });

  it('AbortSignal mid-generation ends it with consistent stats; the next generation equals AR', async () => {
    const abort = new AbortController();
    const it = decoder.decode({
      prompt: Int32Array.from(prompt),
      maxTokens: 30,
      sampler: greedy(),
      signal: abort.signal,
    });
    const tokens: number[] = [];
    let r = await it.next();
    while (!r.done) {
      tokens.push(...r.value);
      if (tokens.length >= 5) abort.abort();
      r = await it.next();
    }
    expect(tokens.length).toBeGreaterThanOrEqual(5);
    expect(tokens.length).toBeLessThan(30);
    expect(tokens).toEqual(expected.slice(0, tokens.length));
    expect(checkStats({ tokens, stats: r.value })).toEqual([]);
    expect((await generate(decoder, prompt, 30)).tokens).toEqual(expected);
  });

  it('a consumer that stops early (return()) leaves the decoder reusable', async () => {
    const stopped = await generateAndStop(decoder, prompt, 30, 3);
    expect(stopped.tokens).toEqual(expected.slice(0, stopped.tokens.length));
    const other = [1, 11, 3];
    expect((await generate(decoder, other, 20)).tokens).toEqual((await generate(ar, other, 20)).tokens);
    expect((await generate(decoder, prompt, 30)).tokens).toEqual(expected);
  });

  it('serves one generation at a time', async () => {
    const a = decoder.decode({ prompt: Int32Array.from(prompt), maxTokens: 5, sampler: greedy() });
    await a.next();
    const b = decoder.decode({ prompt: Int32Array.from(prompt), maxTokens: 5, sampler: greedy() });
    await expect(b.next()).rejects.toThrow(/one generation at a time/);
    await a.return(undefined as never);
    expect((await generate(decoder, prompt, 30)).tokens).toEqual(expected);
  });

  it('maxTokens is met exactly, including 1 and 0', async () => {
    expect((await generate(decoder, prompt, 1)).tokens).toEqual(expected.slice(0, 1));
    expect((await generate(decoder, prompt, 2)).tokens).toEqual(expected.slice(0, 2));
    const none = await generate(decoder, prompt, 0);
    expect(none.tokens).toEqual([]);
    expect(none.stats.tokens).toBe(0);
    expect((await generate(decoder, [1], 7)).tokens).toEqual((await generate(ar, [1], 7)).tokens);
  });
});

describe.each(cases)('%s: close() with a generation in flight', (_name, name, ctx) => {
  it('finishes the step in progress, ends the generation, and does not crash or hang', async () => {
    // a model big enough that a forward is still running when close() arrives
    const model = randomLlama(
      llamaConfig({ dim: 192, nLayers: 4, nHeads: 4, vocabSize: 3000, maxSeqLen: 128 }),
      2,
      {
        std: 0.3,
      },
    );
    const decoder = await createDecoder(name, { model, ...ctx });
    const it = decoder.decode({ prompt: Int32Array.from([1, 2, 3]), maxTokens: 50, sampler: greedy() });
    await it.next();
    const step = it.next(); // a step is now in flight (stage runs posted / forward running)
    await decoder.close();
    const settled = await step.then(
      async (r) => {
        let res = r;
        while (!res.done) res = await it.next();
        return 'ended';
      },
      (err: Error) => `threw: ${err.message}`,
    );
    expect(settled).toBe('ended');
    await expect(
      decoder.decode({ prompt: Int32Array.of(1), maxTokens: 2, sampler: greedy() }).next(),
    ).rejects.toThrow(/closed/);
  });
});
