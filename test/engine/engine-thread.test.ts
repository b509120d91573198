/**
 * EngineThread: the Engine in its own worker thread gives the same results as in-process (greedy and
 * seeded sampling, concurrent batched sequences), streams token events and admission, honours a cancel,
 * and rebuilds the engine's refusals as the same error kinds. Real stories260K, real onnxruntime.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureStoriesPackage } from '../../infra/local/seed';
import { Engine, PromptTooLongError } from '../../workers/engine/src/engine';
import { EngineThread } from '../../workers/engine/src/engine-thread';
import type { GenerationResult } from '../../workers/engine/src/generate/generate';
import { scratchDir } from '../helpers/shared';

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let pkg: string;
let local: Engine;
let thread: EngineThread;

beforeAll(async () => {
  scratch = await scratchDir();
  pkg = path.join(scratch.dir, 'stories260K');
  await ensureStoriesPackage(pkg);
  [local, thread] = await Promise.all([
    Engine.open(pkg, { maxBatch: 8 }),
    EngineThread.open(pkg, { maxBatch: 8, verified: true }),
  ]);
}, 120_000);

afterAll(async () => {
  await Promise.all([local?.close(), thread?.close()]);
  await scratch?.cleanup();
});

describe('EngineThread (stories260K)', () => {
  it('generates exactly what the in-process engine does, one at a time and batched', async () => {
    const prompts = ['Once upon a time', 'Tom had a red ball', 'The sun was hot and'];
    const greedy = { maxTokens: 48, temperature: 0 };
    const sampled = { maxTokens: 48, temperature: 0.9, topP: 0.9, seed: 11 };
    for (const params of [greedy, sampled]) {
      const expected: GenerationResult[] = [];
      for (const p of prompts) expected.push(await local.generate(p, params));
      const got = await Promise.all(prompts.map((p) => thread.generate(p, params)));
      got.forEach((r, i) => {
        expect(r.tokens).toEqual(expected[i].tokens);
        expect(r.text).toBe(expected[i].text);
      });
    }
    expect(thread.maxContext).toBe(local.maxContext);
    expect(thread.maxStages).toBe(local.maxStages);
  });

  it('streams token events in order, reports admission and load, and honours a cancel', async () => {
    const ac = new AbortController();
    let admitted = false;
    const seen: number[] = [];
    const r = await thread.generate(
      'Once upon a time',
      { maxTokens: 200, temperature: 0, signal: ac.signal, onAdmitted: () => (admitted = true) },
      (ev) => {
        expect(ev.index).toBe(seen.length);
        seen.push(...ev.ids);
        if (seen.length >= 5) ac.abort();
      },
    );
    expect(admitted).toBe(true);
    expect(r.finishReason).toBe('cancelled');
    expect(r.tokens).toEqual(seen.slice(0, r.tokens.length));
    expect(r.tokens.length).toBeLessThan(200);
    await new Promise((res) => setTimeout(res, 50)); // the end's stats push
    expect(thread.schedulerStats()).toMatchObject({ running: 0, waiting: 0, maxBatch: 8 });
  });

  it('a generation whose signal fired before the call does not start', async () => {
    const ac = new AbortController();
    ac.abort();
    let admitted = false;
    const r = await thread.generate('Once upon a time', {
      maxTokens: 50,
      signal: ac.signal,
      onAdmitted: () => (admitted = true),
    });
    expect(r.finishReason).toBe('cancelled');
    expect(r.completionTokens).toBe(0);
    expect(admitted).toBe(false);
  });

  it("refuses what the engine refuses, with the engine's error kinds", async () => {
    const long = 'Once upon a time '.repeat(400);
    await expect(thread.generate(long, { maxTokens: 8 })).rejects.toBeInstanceOf(PromptTooLongError);
    await expect(thread.generate('Hi', { maxTokens: 8, stages: 2, decoder: 'ar' })).rejects.toBeInstanceOf(
      RangeError,
    );
  });
});
