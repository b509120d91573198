/**
 * The worker side of continuous batching, on real Redis with the real stories260K engine:
 * - a job waiting inside the engine (no batch slot yet) longer than several BullMQ lock durations is
 *   not considered stalled (the worker renews the locks of all its active jobs), and its time limit
 *   starts when the engine admits it, not while it waits;
 * - the worker process takes up to PPSD_MAX_BATCH jobs at once, passes PPSD_KV_MEMORY to the engine,
 *   reports its scheduler in the heartbeat, and refuses a bad PPSD_KV_MEMORY at start;
 * - a PPSD worker (PPSD_DECODER=ppsd, one stage per core) serves several jobs at once on its one
 *   pipeline of stage threads, each job's tokens exactly AR's, metered as PPSD.
 */

import { randomUUID } from 'node:crypto';
import { keys, QUEUE_PREFIX, queueName, SCHEDULER_METRIC_PREFIX, type StreamEvent } from '@ppsd/contract';
import { createLogger } from '@ppsd/contract/log';
import { Engine } from '@ppsd/engine';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelRegistry } from '../../workers/gpu-worker/src/cancel';
import type { WorkerEngine } from '../../workers/gpu-worker/src/engine-types';
import { createProcessor } from '../../workers/gpu-worker/src/job-runner';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import {
  enqueue,
  MODEL,
  makeJob,
  type Stack,
  sleep,
  startStack,
  storiesPackage,
  streamedTokens,
  usageOf,
  waitFor,
  waitForEnd,
} from '../helpers/stack';

describe('a job waiting inside the engine', () => {
  let redisServer: RedisServer;
  let redis: Redis;
  let engine: Engine;
  let pkg: { dir: string; cleanup(): Promise<void> };

  beforeAll(async () => {
    redisServer = await startRedis();
    redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    pkg = await storiesPackage();
    // one sequence at a time: the second job must wait for a batch slot
    engine = await Engine.open(pkg.dir, { decoder: 'ar', maxBatch: 1 });
  });
  afterAll(async () => {
    await engine?.close();
    redis?.disconnect();
    await redisServer?.stop();
    await pkg?.cleanup();
  });

  it('keeps its lock past several lock durations, and its time limit starts at admission', async () => {
    const LOCK_MS = 500;
    const LIMIT_MS = 1500;
    const WAIT_MS = 2500; // B waits this long: 5 lock durations, and longer than its time limit
    const A = 'Once upon a time';
    const B = 'The little dog';
    let releaseA: () => void = () => {};
    const gateA = new Promise<void>((r) => {
      releaseA = r;
    });
    const seen = new Map<string, { called: number; admitted?: number }>();
    // The real engine; A's first token batch is held at the gate, so A holds the only slot meanwhile.
    const gated: WorkerEngine = {
      close: () => engine.close(),
      generate(prompt, params, onTokens) {
        const rec: { called: number; admitted?: number } = { called: Date.now() };
        seen.set(prompt, rec);
        let held = prompt !== A;
        return engine.generate(
          prompt,
          {
            ...params,
            onAdmitted: () => {
              rec.admitted = Date.now();
              params.onAdmitted?.();
            },
          },
          async (ev) => {
            if (!held) {
              held = true;
              await gateA;
            }
            await onTokens?.(ev);
          },
        );
      },
    };
    const workerConn = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    const worker = new Worker(
      queueName(MODEL),
      createProcessor({
        redis,
        engine: gated,
        workerId: 'in-process',
        model: MODEL,
        defaultDecoder: 'ar',
        decoders: ['ar'],
        stages: 1,
        cancels: new CancelRegistry(redis),
        log: createLogger({ service: 'worker', level: 'silent' }),
        jobTimeoutMs: LIMIT_MS,
      }),
      {
        connection: workerConn,
        prefix: QUEUE_PREFIX,
        concurrency: 2,
        lockDuration: LOCK_MS,
        stalledInterval: LOCK_MS / 2,
        maxStalledCount: 1,
      },
    );
    const stalled: string[] = [];
    worker.on('stalled', (id) => stalled.push(id));
    const queue = new Queue(queueName(MODEL), { connection: redis, prefix: QUEUE_PREFIX });
    try {
      const idA = randomUUID();
      const idB = randomUUID();
      await enqueue(redisServer.url, makeJob(idA, { prompt: A, maxTokens: 50, seed: 1 }));
      await waitFor('A admitted', () => seen.get(A)?.admitted !== undefined, 30_000, 5);
      const jobB = makeJob(idB, { prompt: B, maxTokens: 8, temperature: 0.7, seed: 2 });
      await enqueue(redisServer.url, jobB);
      await waitFor('B in the engine', () => seen.has(B), 30_000, 5);
      expect(engine.schedulerStats()).toMatchObject({ running: 1, waiting: 1 });
      await sleep(WAIT_MS);
      expect(seen.get(B)?.admitted).toBeUndefined(); // still waiting for A's slot
      releaseA();

      const evsA = await waitForEnd(redis, idA);
      const evsB = await waitForEnd(redis, idB);
      // A was admitted and ran past the limit: timed out
      expect(evsA[evsA.length - 1].event).toMatchObject({ type: 'error', code: 'timeout' });
      // B waited longer than the limit without being admitted, then ran well within it
      const b = seen.get(B)!;
      expect(b.admitted! - b.called).toBeGreaterThanOrEqual(WAIT_MS);
      const last = evsB[evsB.length - 1].event;
      expect(last.type).toBe('done');
      const direct = await engine.generate(B, { ...jobB.params, decoder: 'ar' });
      expect(streamedTokens(evsB).ids).toEqual(direct.tokens);
      // and it never stalled: one attempt, no retry notice, no second start
      expect(stalled).toEqual([]);
      const kinds = evsB.map((e) => e.event.type);
      expect(kinds.filter((k) => k === 'start')).toHaveLength(1);
      expect(kinds).not.toContain('retry');
      expect((await queue.getJob(idB))?.attemptsStarted).toBe(1);
      expect((await usageOf(redis, 'acme', idB)).map((u) => [u.attempt, u.status])).toEqual([
        [1, 'completed'],
      ]);
    } finally {
      releaseA();
      await worker.close();
      await queue.close();
      workerConn.disconnect();
    }
  });
});

describe('the worker process with PPSD_MAX_BATCH and PPSD_KV_MEMORY', () => {
  let stack: Stack;
  let engine: Engine;
  beforeAll(async () => {
    stack = await startStack({ api: false, workers: 0 });
    engine = await Engine.open(stack.packageDir, { decoder: 'ar' });
  });
  afterAll(async () => {
    await engine?.close();
    await stack?.stop();
  });

  it('refuses an invalid PPSD_KV_MEMORY at start, naming it', async () => {
    const w = await stack.startWorker({ env: { PPSD_KV_MEMORY: 'lots' }, waitReady: false });
    const exit = await w.exited;
    expect(exit.code, w.output).toBe(2);
    expect(w.output).toMatch(/PPSD_KV_MEMORY must be a positive size in bytes.*got 'lots'/);
  });

  it('holds up to PPSD_MAX_BATCH jobs at once and reports its scheduler in the heartbeat', async () => {
    const w = await stack.startWorker({
      env: { PPSD_MAX_BATCH: '3', PPSD_KV_MEMORY: '64MiB', PPSD_FAULT_TOKEN_DELAY_MS: '20' },
    });
    expect(w.output).toContain('max batch 3, KV pool 67108864 bytes');
    const jobs = ['Once upon a time', 'The little dog', 'Tom and Sue'].map((prompt, i) =>
      makeJob(randomUUID(), { prompt, maxTokens: 30, temperature: 0.8, seed: 40 + i }),
    );
    await Promise.all(jobs.map((j) => enqueue(stack.redis.url, j)));
    const ends = await Promise.all(jobs.map((j) => waitForEnd(stack.client, j.id)));
    const queue = new Queue(queueName(MODEL), { connection: stack.client, prefix: QUEUE_PREFIX });
    try {
      const done = await Promise.all(jobs.map((j) => queue.getJob(j.id)));
      // every job was taken before the first one finished: three in flight at once
      const firstFinish = Math.min(...done.map((j) => j!.finishedOn!));
      for (const j of done) expect(j!.processedOn!).toBeLessThan(firstFinish);
    } finally {
      await queue.close();
    }
    for (const [i, evs] of ends.entries()) {
      const direct = await engine.generate(jobs[i].prompt, { ...jobs[i].params, decoder: 'ar' });
      expect(streamedTokens(evs).ids).toEqual(direct.tokens); // every index once
      expect((evs[evs.length - 1].event as StreamEvent).type).toBe('done');
    }
    const hb = await waitFor(
      'an idle scheduler in the heartbeat',
      async () => {
        const [beat] = await stack.readyWorkers();
        return beat?.scheduler?.running === 0 && beat.scheduler.waiting === 0 && beat.busy === 0 && beat;
      },
      10_000,
    );
    expect(hb.scheduler!.maxBatch).toBeGreaterThanOrEqual(1);
    expect(hb.scheduler!.maxBatch).toBeLessThanOrEqual(3);
    // the batched steps it ran (warm-up included) are in the model's metrics hash
    const steps = Object.entries(await stack.client.hgetall(keys.metrics(MODEL))).filter(([f]) =>
      f.startsWith(SCHEDULER_METRIC_PREFIX.batchSteps),
    );
    expect(steps.length).toBeGreaterThan(0);
    w.child.kill('SIGTERM');
    expect((await w.exited).code, w.output).toBe(0);
  });

  it('a PPSD worker serves several jobs at once on its one pipeline, each exactly AR', async () => {
    const w = await stack.startWorker({
      env: {
        PPSD_DECODER: 'ppsd',
        PPSD_DEVICES: 'cpu,cpu',
        PPSD_MAX_BATCH: '4',
        PPSD_FAULT_TOKEN_DELAY_MS: '20',
      },
    });
    const jobs = ['Once upon a time', 'The little dog', 'Tom and Sue', 'Lily had a red ball'].map((prompt) =>
      makeJob(randomUUID(), { prompt, maxTokens: 30, temperature: 0 }),
    );
    await Promise.all(jobs.map((j) => enqueue(stack.redis.url, j)));
    const ends = await Promise.all(jobs.map((j) => waitForEnd(stack.client, j.id)));
    const queue = new Queue(queueName(MODEL), { connection: stack.client, prefix: QUEUE_PREFIX });
    try {
      const done = await Promise.all(jobs.map((j) => queue.getJob(j.id)));
      const firstFinish = Math.min(...done.map((j) => j!.finishedOn!));
      for (const j of done) expect(j!.processedOn!).toBeLessThan(firstFinish);
    } finally {
      await queue.close();
    }
    // generating at once, not queued behind each other in the engine: every job's first token was
    // published before any job's last (stream ids are Redis milliseconds)
    const at = (id: string) => Number(id.split('-')[0]);
    const tokenTimes = ends.map((evs) => evs.filter((e) => e.event.type === 'tokens').map((e) => at(e.id)));
    const lastFirst = Math.max(...tokenTimes.map((t) => t[0]));
    const firstLast = Math.min(...tokenTimes.map((t) => t[t.length - 1]));
    expect(lastFirst).toBeLessThan(firstLast);
    for (const [i, evs] of ends.entries()) {
      const direct = await engine.generate(jobs[i].prompt, { ...jobs[i].params, decoder: 'ar' });
      expect(streamedTokens(evs).ids).toEqual(direct.tokens);
      const [usage] = await usageOf(stack.client, 'acme', jobs[i].id);
      expect(usage.decoder).toBe('ppsd');
    }
    w.child.kill('SIGTERM');
    expect((await w.exited).code, w.output).toBe(0);
  });
});
