/**
 * Pipeline-parallel serving: PPSD sequences in flight share one pipeline of batched stage threads, each
 * sequence still token for token what AR makes alone, whatever else is in flight (mixed lengths, joining
 * mid-generation, a cancel, seeded sampling). Under 'auto' the drafting adapts to load; the stages run
 * their steps at the same time. Real stories260K weights, real onnxruntime, real threads.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureStoriesPackage } from '../../infra/local/seed';
import { Engine, type EngineGenerateParams } from '../../workers/engine/src/engine';
import type { GenerationResult } from '../../workers/engine/src/generate/generate';
import { SequenceTooLargeError } from '../../workers/engine/src/schedule/scheduler';
import { scratchDir } from '../helpers/shared';

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let pkg: string;
/** Plain AR, the reference every served sequence must equal. */
let ar: Engine;
/** PPSD served (k = 2 stage threads), the default rule: sequences draft while fewer than 2 are in flight. */
let ppsd: Engine;

const PROMPTS = [
  'Once upon a time',
  'Lily and Ben went to the park. They saw a big dog. The dog was',
  'Tom',
  'One day, a little bird flew over the tall tree and sang a happy song to all the animals in the forest. The fox',
  'The sun was hot',
  'Sara had a red ball',
];

const greedy = (
  maxTokens: number,
  decoder: EngineGenerateParams['decoder'] = 'auto',
): EngineGenerateParams => ({
  maxTokens,
  temperature: 0,
  decoder,
});

beforeAll(async () => {
  scratch = await scratchDir();
  pkg = path.join(scratch.dir, 'stories260K');
  await ensureStoriesPackage(pkg);
  ar = await Engine.open(pkg, { maxBatch: 8, verified: true });
  ppsd = await Engine.open(pkg, { maxBatch: 8, verified: true, decoder: 'ppsd', devices: ['cpu', 'cpu'] });
}, 120_000);

afterAll(async () => {
  await ppsd?.close();
  await ar?.close();
  await scratch?.cleanup();
});

const reference = (p: string, maxTokens: number) => ar.generate(p, greedy(maxTokens, 'ar'));

describe('pipeline-parallel serving (stories260K)', () => {
  it('concurrent PPSD sequences share the stage threads, each exactly AR, with the stages overlapping', async () => {
    const alone: GenerationResult[] = [];
    for (const [i, p] of PROMPTS.entries()) alone.push(await reference(p, 40 + 7 * i));
    const before = (await ppsd.pipelineServerStats())!;
    const stepsBefore = { ...ppsd.schedulerStats().stepsByBatchSize };
    const together = await Promise.all(PROMPTS.map((p, i) => ppsd.generate(p, greedy(40 + 7 * i))));
    const after = (await ppsd.pipelineServerStats())!;
    for (const [i, r] of together.entries()) {
      expect(r.stats.decoder).toBe('ppsd');
      expect(r.tokens).toEqual(alone[i].tokens);
      expect(r.text).toBe(alone[i].text);
    }
    // six sequences in flight: the stages ran other sequences' steps at the same time
    expect(after.overlappedSteps - before.overlappedSteps).toBeGreaterThan(20);
    // and, being loaded, nobody drafted (the first may have, while it was alone)
    const drafted = together.filter((r) => r.stats.draftTokensProposed > 0).length;
    expect(drafted).toBeLessThanOrEqual(1);
    expect(ppsd.schedulerStats().running).toBe(0);
    // the pipeline's steps count in the scheduler's batch-size histogram (the metrics' ppsd:batch_size)
    const stepsAfter = ppsd.schedulerStats().stepsByBatchSize;
    const multi = Object.entries(stepsAfter).filter(
      ([n, c]) => Number(n) >= 2 && c > (stepsBefore[Number(n)] ?? 0),
    );
    expect(multi.length).toBeGreaterThan(0);
  });

  it("'auto' drafts alone; a request naming PPSD drafts under load too, still exactly AR", async () => {
    const one = await ppsd.generate(PROMPTS[0], greedy(40));
    expect(one.stats.draftTokensProposed).toBeGreaterThan(20);
    const alone: GenerationResult[] = [];
    for (const p of PROMPTS.slice(0, 4)) alone.push(await reference(p, 40));
    const rs = await Promise.all(PROMPTS.slice(0, 4).map((p) => ppsd.generate(p, greedy(40, 'ppsd'))));
    for (const [i, r] of rs.entries()) {
      expect(r.stats.draftTokensProposed).toBeGreaterThan(20);
      expect(r.tokens).toEqual(alone[i].tokens);
    }
  });

  it('sequences join mid-generation and a cancelled one leaves the others untouched', async () => {
    const alone: GenerationResult[] = [];
    for (const p of PROMPTS.slice(0, 4)) alone.push(await reference(p, 60));
    const cancel = new AbortController();
    const late: Promise<GenerationResult>[] = [];
    let joined = false;
    const first = ppsd.generate(PROMPTS[0], greedy(60), (ev) => {
      if (!joined && ev.index + ev.ids.length >= 5) {
        joined = true;
        late.push(ppsd.generate(PROMPTS[2], greedy(60)));
        late.push(ppsd.generate(PROMPTS[3], greedy(60, 'ppsd')));
      }
    });
    const cancelled = ppsd.generate(PROMPTS[1], { ...greedy(60), signal: cancel.signal }, (ev) => {
      if (ev.index + ev.ids.length >= 8) cancel.abort();
    });
    const [a, c] = await Promise.all([first, cancelled]);
    const [b, d] = await Promise.all(late);
    expect(a.tokens).toEqual(alone[0].tokens);
    expect(b.tokens).toEqual(alone[2].tokens);
    expect(d.tokens).toEqual(alone[3].tokens);
    expect(c.finishReason).toBe('cancelled');
    expect(c.tokens.length).toBeGreaterThanOrEqual(8);
    expect(c.tokens).toEqual(alone[1].tokens.slice(0, c.tokens.length));
    // the cancelled sequence's caches are gone and the pipeline still serves
    const again = await ppsd.generate(PROMPTS[1], greedy(60));
    expect(again.tokens).toEqual(alone[1].tokens);
  });

  it('a seeded sampled PPSD sequence does not depend on what else is in flight', async () => {
    const sampled: EngineGenerateParams = {
      maxTokens: 50,
      temperature: 0.9,
      topP: 0.95,
      seed: 1234,
      decoder: 'ppsd',
    };
    const alone = await ppsd.generate(PROMPTS[5], sampled);
    const [inBatch] = await Promise.all([
      ppsd.generate(PROMPTS[5], sampled),
      ppsd.generate(PROMPTS[0], { maxTokens: 50, temperature: 1, seed: 9 }),
      ppsd.generate(PROMPTS[3], greedy(30)),
    ]);
    expect(inBatch.tokens).toEqual(alone.tokens);
  });

  it('a stage thread that dies takes its pipeline down; the next PPSD request gets a new one', async () => {
    const logs: string[] = [];
    const engine = await Engine.open(pkg, {
      maxBatch: 4,
      verified: true,
      decoder: 'ppsd',
      devices: ['cpu', 'cpu'],
      log: (line) => logs.push(line),
    });
    try {
      const alone = await reference(PROMPTS[1], 30);
      expect((await engine.generate(PROMPTS[1], greedy(30))).tokens).toEqual(alone.tokens);
      // reach into the served pipeline and kill its last stage's thread while nothing is in flight
      // biome-ignore lint/suspicious/noExplicitAny: the test crashes a private thread on purpose
      const first = await (engine as any).server;
      // biome-ignore lint/suspicious/noExplicitAny: as above
      const worker = (first.threads.at(-1) as any).worker as import('node:worker_threads').Worker;
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      await worker.terminate();
      await exited;
      expect(logs.some((l) => /served PPSD pipeline failed .*exited/.test(l))).toBe(true);
      // the broken pipeline refuses work; the engine builds a fresh one for the next request
      const again = await engine.generate(PROMPTS[1], greedy(30));
      expect(again.stats.decoder).toBe('ppsd');
      expect(again.tokens).toEqual(alone.tokens);
      // biome-ignore lint/suspicious/noExplicitAny: as above
      const second = await (engine as any).server;
      expect(second).not.toBe(first);
      await expect(first.withSequence(10, true, async () => undefined)).rejects.toThrow(/pipeline is down/);

      // a crash mid-generation fails the sequences in flight (no hang), and the engine recovers again
      // biome-ignore lint/suspicious/noExplicitAny: as above
      const worker2 = (second.threads[0] as any).worker as import('node:worker_threads').Worker;
      let killed = false;
      const inFlight = engine.generate(PROMPTS[3], greedy(200), (ev) => {
        if (!killed && ev.index >= 5) {
          killed = true;
          void worker2.terminate();
        }
      });
      await expect(inFlight).rejects.toThrow(/exited|pipeline is down|closed/);
      const third = await engine.generate(PROMPTS[1], greedy(30));
      expect(third.tokens).toEqual(alone.tokens);
    } finally {
      await engine.close();
    }
  });

  it('served sequences are admitted by the same KV budget, and one that can never fit is refused', async () => {
    const perSequence = (PROMPTS[1].length + 64) * ppsd.scheduler!.bytesPerPosition;
    const small = await Engine.open(pkg, {
      verified: true,
      maxBatch: 8,
      decoder: 'ppsd',
      kvMemoryBytes: 2 * perSequence,
    });
    try {
      let maxRunning = 0;
      const watch = () => {
        maxRunning = Math.max(maxRunning, small.schedulerStats().running);
      };
      const alone = await reference(PROMPTS[1], 64);
      const all = await Promise.all(
        Array.from({ length: 4 }, () => small.generate(PROMPTS[1], greedy(64), watch)),
      );
      for (const r of all) expect(r.tokens).toEqual(alone.tokens);
      expect(maxRunning).toBeLessThanOrEqual(2);
      await expect(small.generate(PROMPTS[1], greedy(400))).rejects.toBeInstanceOf(SequenceTooLargeError);
    } finally {
      await small.close();
    }
  });
});
