/**
 * Continuous batching is lossless: every sequence of a batch comes out exactly as it does alone, whatever
 * runs beside it (mixed prompt lengths, sequences joining and leaving mid-generation, a cancel, a sequence
 * at the context limit, seeded sampling, the speculative decoders), and the KV budget makes sequences wait
 * rather than overrun it. Real stories260K weights, real onnxruntime.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureStoriesPackage } from '../../infra/local/seed';
import { AUTO_SPECULATE_BELOW, Engine, type EngineGenerateParams } from '../../workers/engine/src/engine';
import type { GenerationResult } from '../../workers/engine/src/generate/generate';
import { SequenceTooLargeError } from '../../workers/engine/src/schedule/scheduler';
import { scratchDir } from '../helpers/shared';

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let pkg: string;
let engine: Engine;

const PROMPTS = [
  'Once upon a time',
  'Lily and Ben went to the park. They saw a big dog. The dog was',
  'Tom',
  'One day, a little bird flew over the tall tree and sang a happy song to all the animals in the forest. The fox',
  'The sun was hot',
  'Sara had a red ball',
];

beforeAll(async () => {
  scratch = await scratchDir();
  pkg = path.join(scratch.dir, 'stories260K');
  await ensureStoriesPackage(pkg);
  engine = await Engine.open(pkg, { maxBatch: 8 });
}, 120_000);

afterAll(async () => {
  await engine?.close();
  await scratch?.cleanup();
});

/** The same generation run alone on an idle engine. */
async function solo(prompt: string, params: EngineGenerateParams): Promise<GenerationResult> {
  return engine.generate(prompt, { ...params, signal: undefined });
}

const greedy = (maxTokens: number): EngineGenerateParams => ({ maxTokens, temperature: 0 });

describe('continuous batching (stories260K)', () => {
  it('runs concurrent sequences in shared steps, each exactly as it runs alone', async () => {
    const alone = [];
    for (const [i, p] of PROMPTS.entries()) alone.push(await solo(p, greedy(40 + 7 * i)));
    const before = { ...engine.schedulerStats().stepsByBatchSize };
    const together = await Promise.all(PROMPTS.map((p, i) => engine.generate(p, greedy(40 + 7 * i))));
    for (const [i, r] of together.entries()) {
      expect(r.tokens).toEqual(alone[i].tokens);
      expect(r.text).toBe(alone[i].text);
      expect(r.finishReason).toBe(alone[i].finishReason);
    }
    // the steps really were shared: some step ran (nearly) all six together
    const after = engine.schedulerStats().stepsByBatchSize;
    const batchedSteps = Object.entries(after)
      .filter(([n]) => Number(n) >= 5)
      .reduce((s, [n, c]) => s + c - (before[Number(n)] ?? 0), 0);
    expect(batchedSteps).toBeGreaterThan(10);
  });

  it('sequences join and leave mid-generation, and a cancelled one leaves the others untouched', async () => {
    const alone = [];
    for (const p of PROMPTS.slice(0, 4)) alone.push(await solo(p, greedy(60)));
    const cancel = new AbortController();
    const late: Promise<GenerationResult>[] = [];
    let joined = false;
    const first = engine.generate(PROMPTS[0], greedy(60), (ev) => {
      // two more sequences join once the first is 5 tokens in
      if (!joined && ev.index + ev.ids.length >= 5) {
        joined = true;
        late.push(engine.generate(PROMPTS[2], greedy(60)));
        late.push(engine.generate(PROMPTS[3], greedy(60)));
      }
    });
    let seen = 0;
    const cancelled = engine.generate(PROMPTS[1], { ...greedy(60), signal: cancel.signal }, (ev) => {
      seen = ev.index + ev.ids.length;
      if (seen >= 8) cancel.abort();
    });
    const [a, c] = await Promise.all([first, cancelled]);
    const [b, d] = await Promise.all(late);
    expect(a.tokens).toEqual(alone[0].tokens);
    expect(b.tokens).toEqual(alone[2].tokens);
    expect(d.tokens).toEqual(alone[3].tokens);
    expect(c.finishReason).toBe('cancelled');
    expect(c.tokens.length).toBeGreaterThanOrEqual(8);
    expect(c.tokens.length).toBeLessThan(alone[1].tokens.length);
    expect(c.tokens).toEqual(alone[1].tokens.slice(0, c.tokens.length));
    expect(engine.schedulerStats().running).toBe(0);
  });

  it('a sequence at the context limit ends with length while the others go on', async () => {
    let long = 'Once upon a time';
    while (engine.countPromptTokens(long) < engine.maxContext - 30) long += ' there was a little girl. She';
    const ids = engine.countPromptTokens(long);
    const room = engine.maxContext - ids;
    expect(room).toBeGreaterThan(0);
    expect(room).toBeLessThan(40);
    const aloneLong = await solo(long, greedy(room));
    const aloneShort = await solo(PROMPTS[4], greedy(80));
    const [l, s] = await Promise.all([
      engine.generate(long, greedy(room)),
      engine.generate(PROMPTS[4], greedy(80)),
    ]);
    expect(l.tokens).toEqual(aloneLong.tokens);
    expect(s.tokens).toEqual(aloneShort.tokens);
    if (l.finishReason === 'length') expect(l.promptTokens + l.completionTokens).toBe(engine.maxContext);
  });

  it('a seeded sampled sequence does not depend on what else is in the batch', async () => {
    const sampled: EngineGenerateParams = { maxTokens: 50, temperature: 0.9, topP: 0.95, seed: 1234 };
    const alone = await solo(PROMPTS[5], sampled);
    const [inBatch] = await Promise.all([
      engine.generate(PROMPTS[5], sampled),
      engine.generate(PROMPTS[0], { maxTokens: 50, temperature: 1, seed: 9 }),
      engine.generate(PROMPTS[3], greedy(30)),
    ]);
    expect(inBatch.tokens).toEqual(alone.tokens);
  });

  it('EESD and DV verify inside the batched steps, still token for token AR', async () => {
    const alone = [];
    for (const p of PROMPTS.slice(0, 3)) alone.push(await solo(p, greedy(48)));
    const [e, d, a] = await Promise.all([
      engine.generate(PROMPTS[0], { ...greedy(48), decoder: 'eesd' }),
      engine.generate(PROMPTS[1], { ...greedy(48), decoder: 'dv' }),
      engine.generate(PROMPTS[2], { ...greedy(48), decoder: 'ar' }),
    ]);
    expect(e.stats.decoder).toBe('eesd');
    expect(d.stats.decoder).toBe('dv');
    expect(e.tokens).toEqual(alone[0].tokens);
    expect(d.tokens).toEqual(alone[1].tokens);
    expect(a.tokens).toEqual(alone[2].tokens);
  });

  it("'auto' speculates alone and batches plain AR under load", async () => {
    const eesd = await Engine.open(pkg, { decoder: 'eesd', verified: true });
    try {
      const one = await eesd.generate(PROMPTS[0], { ...greedy(20), decoder: 'auto' });
      expect(one.stats.decoder).toBe('eesd');
      const many = await Promise.all(
        PROMPTS.map((p) => eesd.generate(p, { ...greedy(20), decoder: 'auto' })),
      );
      const ar = many.filter((r) => r.stats.decoder === 'ar').length;
      expect(ar).toBe(PROMPTS.length - AUTO_SPECULATE_BELOW);
    } finally {
      await eesd.close();
    }
  });
});

describe('KV memory budget', () => {
  it('sequences wait for KV memory instead of exceeding the budget, and one that can never fit is refused', async () => {
    const probe = engine.scheduler!;
    const perSequence = (PROMPTS[1].length + 64) * probe.bytesPerPosition; // generous: characters >= tokens
    const small = await Engine.open(pkg, { verified: true, maxBatch: 8, kvMemoryBytes: 2 * perSequence });
    try {
      let maxRunning = 0;
      let maxWaiting = 0;
      const watch = () => {
        const s = small.schedulerStats();
        maxRunning = Math.max(maxRunning, s.running);
        maxWaiting = Math.max(maxWaiting, s.waiting);
        expect(s.kvUsedBytes).toBeLessThanOrEqual(s.kvBudgetBytes);
      };
      const alone = await small.generate(PROMPTS[1], greedy(64));
      const all = await Promise.all(
        Array.from({ length: 5 }, () => small.generate(PROMPTS[1], greedy(64), watch)),
      );
      for (const r of all) expect(r.tokens).toEqual(alone.tokens);
      expect(maxRunning).toBeLessThanOrEqual(2);
      expect(maxWaiting).toBeGreaterThanOrEqual(1);
      // within the context, but more KV memory than the whole pool: refused, not queued forever
      await expect(small.generate(PROMPTS[1], greedy(400))).rejects.toBeInstanceOf(SequenceTooLargeError);
    } finally {
      await small.close();
    }
  });

  it('a sequence cancelled while it waits leaves the queue without running', async () => {
    const s = await Engine.open(pkg, { verified: true, maxBatch: 1 });
    try {
      let open!: () => void;
      const gate = new Promise<void>((r) => {
        open = r;
      });
      const first = s.generate(PROMPTS[0], greedy(60), () => gate); // holds the only slot until opened
      const ac = new AbortController();
      const waiting = s.generate(PROMPTS[1], {
        ...greedy(60),
        signal: ac.signal,
        onAdmitted: () => expect.fail('admitted'),
      });
      await new Promise((r) => setTimeout(r, 50));
      expect(s.schedulerStats().waiting).toBe(1);
      ac.abort();
      const r = await waiting;
      expect(r.finishReason).toBe('cancelled');
      expect(r.completionTokens).toBe(0);
      open();
      await first;
    } finally {
      await s.close();
    }
  });
});
