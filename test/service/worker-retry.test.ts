/**
 * Retried attempts publish nothing twice: the job runner in-process on real Redis with the real
 * stories260K engine, whose first attempt dies after a few tokens (fault injected around the engine).
 * The second attempt regenerates the same text (same seed) and publishes only the missing indexes.
 */
import { randomUUID } from 'node:crypto';
import { keys, QUEUE_PREFIX, queueName } from '@ppsd/contract';
import { Engine } from '@ppsd/engine';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CancelRegistry } from '../../workers/gpu-worker/src/cancel';
import type { WorkerEngine } from '../../workers/gpu-worker/src/engine-types';
import { createProcessor } from '../../workers/gpu-worker/src/job-runner';
import { captureLogger } from '../helpers/logs';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import {
  enqueue,
  MODEL,
  makeJob,
  storiesPackage,
  streamedTokens,
  usageOf,
  waitForEnd,
} from '../helpers/stack';

let redisServer: RedisServer;
let redis: Redis;
let engine: Engine;
let pkg: { dir: string; cleanup(): Promise<void> };

beforeAll(async () => {
  redisServer = await startRedis();
  redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
  pkg = await storiesPackage();
  engine = await Engine.open(pkg.dir, { decoder: 'ar' });
});

afterAll(async () => {
  await engine?.close();
  redis?.disconnect();
  await redisServer?.stop();
  await pkg?.cleanup();
});

it('a retried attempt continues the stream without duplicating a token', async () => {
  let failNext = true;
  const flaky: WorkerEngine = {
    close: () => engine.close(),
    async generate(prompt, params, onTokens) {
      const inject = failNext;
      failNext = false;
      return engine.generate(prompt, params, async (ev) => {
        if (inject && ev.index >= 6) throw new Error('injected fault: device lost');
        await onTokens?.(ev);
      });
    },
  };
  const cancels = new CancelRegistry(redis);
  const logs = captureLogger('worker', { workerId: 'in-process' });
  const worker = new Worker(
    queueName(MODEL),
    createProcessor({
      redis,
      engine: flaky,
      workerId: 'in-process',
      model: MODEL,
      defaultDecoder: 'ar',
      decoders: ['ar'],
      stages: 1,
      cancels,
      log: logs.log,
    }),
    { connection: new Redis(redisServer.url, { maxRetriesPerRequest: null }), prefix: QUEUE_PREFIX },
  );
  try {
    const id = randomUUID();
    const job = makeJob(id, { maxTokens: 20, temperature: 0.9, seed: 77 });
    await enqueue(redisServer.url, job, 3);
    const evs = await waitForEnd(redis, id);
    const direct = await engine.generate(job.prompt, { ...job.params, decoder: 'ar' });
    const streamed = streamedTokens(evs); // throws on a duplicated or skipped index
    expect(streamed.ids).toEqual(direct.tokens);
    expect(streamed.text).toBe(direct.text);
    const starts = evs.filter((e) => e.event.type === 'start').map((e) => e.event.attempt);
    expect(starts).toEqual([1, 2]);
    // attempt 1 published indexes 0..5 (in one or more events), attempt 2 everything from 6 on
    for (const { event } of evs) {
      if (event.type !== 'tokens') continue;
      if (event.attempt === 1) expect(event.index + event.ids.length).toBeLessThanOrEqual(6);
      else expect(event.index).toBeGreaterThanOrEqual(6);
    }
    const second = logs.lines().find((l) => /6 tokens already published/.test(l.msg));
    expect(second).toMatchObject({ jobId: id, tenant: 'acme', attempt: 2, publishedTokens: 6 });
    const usage = await usageOf(redis, 'acme', id);
    expect(usage.map((u) => [u.attempt, u.status])).toEqual([
      [1, 'failed'],
      [2, 'completed'],
    ]);
    expect(await redis.hget(keys.tenantReservations('acme'), id)).toBeNull();
  } finally {
    await worker.close();
  }
});
