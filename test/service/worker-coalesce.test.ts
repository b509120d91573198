/**
 * Cross-job coalescing of the worker's stream writes, on real Redis (counted with MONITOR, so every
 * call of either job-event script is seen as Redis received it):
 * - `EventCoalescer`: the writes of one event-loop turn are one script call, split at its per-call cap;
 *   later turns make later calls; a failed call fails each of its writes;
 * - the job runner with the real stories260K engine batching several jobs: fewer script calls than
 *   stream entries, the same tokens as each job generated alone, and with every first attempt dying
 *   mid-generation, the retried attempts still publish each token index exactly once.
 */
import { createHash, randomUUID } from 'node:crypto';
import {
  type JobEventWrite,
  type JobScripts,
  PUBLISH_EVENT_LUA,
  PUBLISH_EVENTS_LUA,
  QUEUE_PREFIX,
  queueName,
  type StreamEvent,
  withJobScripts,
} from '@ppsd/contract';
import { createLogger } from '@ppsd/contract/log';
import { Engine } from '@ppsd/engine';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelRegistry } from '../../workers/gpu-worker/src/cancel';
import type { WorkerEngine } from '../../workers/gpu-worker/src/engine-types';
import { EventCoalescer } from '../../workers/gpu-worker/src/event-coalescer';
import { createProcessor } from '../../workers/gpu-worker/src/job-runner';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import {
  enqueue,
  MODEL,
  makeJob,
  type ReadEvent,
  storiesPackage,
  streamedTokens,
  usageOf,
  waitForEnd,
} from '../helpers/stack';

const sha = (lua: string) => createHash('sha1').update(lua).digest('hex');
const SCRIPTS = { one: sha(PUBLISH_EVENT_LUA), many: sha(PUBLISH_EVENTS_LUA) };
const lastLine = (lua: string) => lua.trim().split('\n').pop() ?? lua;

let redisServer: RedisServer;
let redis: Redis;

beforeAll(async () => {
  redisServer = await startRedis();
  redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
});
afterAll(async () => {
  redis?.disconnect();
  await redisServer?.stop();
});

/**
 * Job-event script calls as Redis receives them (MONITOR), with the number of events each carried.
 * `calls()` first sends a marker PING on the connection the scripts use and waits for MONITOR to echo
 * it: Redis logs commands in the order it runs them, so every earlier call has been seen by then.
 */
async function countScriptCalls(): Promise<{ calls: () => Promise<number[]>; stop: () => void }> {
  const monitor = await redis.monitor();
  const events: number[] = [];
  const markers = new Map<string, () => void>();
  monitor.on('monitor', (_time: string, args: string[]) => {
    const [cmd, script, numKeys] = args;
    if (/^ping$/i.test(cmd ?? '') && script) markers.get(script)?.();
    if (!/^eval(sha)?$/i.test(cmd ?? '')) return;
    // EVALSHA names the script by SHA; an EVAL (the script cache was empty) carries its body, which
    // MONITOR prints escaped, so it is told by its last line
    if (script === SCRIPTS.one || script?.includes(lastLine(PUBLISH_EVENT_LUA))) events.push(1);
    if (script === SCRIPTS.many || script?.includes(lastLine(PUBLISH_EVENTS_LUA)))
      events.push(Number(numKeys) / 3);
  });
  const sync = async () => {
    const marker = `monitor-${randomUUID()}`;
    const seen = new Promise<void>((resolve) => markers.set(marker, resolve));
    await redis.ping(marker);
    await seen;
    markers.delete(marker);
  };
  await sync();
  events.length = 0;
  return {
    calls: async () => {
      await sync();
      return [...events];
    },
    stop: () => monitor.disconnect(),
  };
}

const tokensWrite = (jobId: string, index: number): JobEventWrite => ({
  jobId,
  event: { type: 'tokens', attempt: 1, index, ids: [index], text: 'x' },
  kind: 'tokens',
  attempt: 1,
  tokenEnd: index + 1,
  charsEnd: index + 1,
});

describe('EventCoalescer', () => {
  it('writes what one event-loop turn gathers in one call, split at its cap; a later turn calls again', async () => {
    const scripts = withJobScripts(redis);
    const coalescer = new EventCoalescer(scripts, 4);
    await coalescer.write(tokensWrite(`warm-${randomUUID()}`, 0)); // loads the script
    const counted = await countScriptCalls();
    try {
      const jobs = Array.from({ length: 6 }, () => randomUUID());
      // turn 1: index 0 of six jobs, and index 1 of the first (after its 0 in the same call)
      const first = Promise.all([
        ...jobs.map((j) => coalescer.write(tokensWrite(j, 0))),
        coalescer.write(tokensWrite(jobs[0], 1)),
      ]);
      const ids = await first;
      // turn 2: a duplicate and a new index
      const second = await Promise.all([
        coalescer.write(tokensWrite(jobs[1], 0)),
        coalescer.write(tokensWrite(jobs[1], 1)),
      ]);
      // 7 writes in calls of at most 4, then 2 in one more call
      expect(await counted.calls()).toEqual([4, 3, 2]);
      expect(ids.every((id) => typeof id === 'string')).toBe(true);
      expect(second[0]).toBeNull();
      expect(second[1]).toMatch(/^\d+-\d+$/);
      const first0 = await redis.xrange(`ppsd:{job:${jobs[0]}}:events`, '-', '+');
      expect(
        first0.map(([, f]) => (JSON.parse(f[1]) as Extract<StreamEvent, { type: 'tokens' }>).index),
      ).toEqual([0, 1]);
    } finally {
      counted.stop();
    }
  });

  it('fails every write of a call that fails', async () => {
    const broken: JobScripts = {
      ppsdPublishEvent: () => Promise.reject(new Error('unused')),
      ppsdPublishEvents: () => Promise.reject(new Error('connection lost')),
    };
    const coalescer = new EventCoalescer(broken);
    const results = await Promise.allSettled([
      coalescer.write(tokensWrite('a', 0)),
      coalescer.write(tokensWrite('b', 0)),
    ]);
    expect(results.map((r) => r.status === 'rejected' && (r.reason as Error).message)).toEqual([
      'connection lost',
      'connection lost',
    ]);
  });
});

describe('the job runner batching several jobs', () => {
  const JOBS = 4;
  let engine: Engine;
  let pkg: { dir: string; cleanup(): Promise<void> };

  beforeAll(async () => {
    pkg = await storiesPackage();
    engine = await Engine.open(pkg.dir, { decoder: 'ar', maxBatch: JOBS });
  });
  afterAll(async () => {
    await engine?.close();
    await pkg?.cleanup();
  });

  /**
   * Runs one job per prompt through a BullMQ worker holding all of them at once; checks each streamed
   * exactly the tokens it generates alone; returns the job ids and their streams.
   */
  async function runJobs(
    jobEngine: WorkerEngine,
    prompts: string[],
  ): Promise<{ ids: string[]; streams: ReadEvent[][] }> {
    const conn = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    const worker = new Worker(
      queueName(MODEL),
      createProcessor({
        redis,
        engine: jobEngine,
        workerId: 'in-process',
        model: MODEL,
        defaultDecoder: 'ar',
        decoders: ['ar'],
        stages: 1,
        cancels: new CancelRegistry(redis),
        log: createLogger({ service: 'worker', level: 'silent' }),
      }),
      { connection: conn, prefix: QUEUE_PREFIX, concurrency: JOBS },
    );
    try {
      const jobs = prompts.map((prompt, i) =>
        makeJob(randomUUID(), { prompt, maxTokens: 24, temperature: 0.8, seed: 100 + i }),
      );
      await Promise.all(jobs.map((j) => enqueue(redisServer.url, j, 3)));
      const streams = await Promise.all(jobs.map((j) => waitForEnd(redis, j.id)));
      for (const [i, evs] of streams.entries()) {
        const direct = await engine.generate(jobs[i].prompt, { ...jobs[i].params, decoder: 'ar' });
        const streamed = streamedTokens(evs); // throws on a duplicated or skipped index
        expect(streamed.ids).toEqual(direct.tokens);
        expect(streamed.text).toBe(direct.text);
        expect(evs[evs.length - 1].event.type).toBe('done');
      }
      return { ids: jobs.map((j) => j.id), streams };
    } finally {
      await worker.close();
      conn.disconnect();
    }
  }

  const PROMPTS = ['Once upon a time', 'The little dog', 'Tom and Sue', 'Lily went to the park'];

  it('writes a step of several jobs in one script call: fewer calls than stream entries', async () => {
    const counted = await countScriptCalls();
    try {
      const { streams } = await runJobs(engine, PROMPTS);
      const entries = streams.reduce((n, evs) => n + evs.length, 0);
      const calls = await counted.calls();
      // one call per entry without coalescing; here several jobs' entries share calls
      expect(calls.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(entries);
      expect(calls.length).toBeLessThan(entries);
      expect(Math.max(...calls)).toBeGreaterThan(1);
    } finally {
      counted.stop();
    }
  });

  it('publishes every token index once when every first attempt dies mid-generation', async () => {
    const failed = new Set<string>();
    const flaky: WorkerEngine = {
      close: () => engine.close(),
      generate(prompt, params, onTokens) {
        const inject = !failed.has(prompt);
        failed.add(prompt);
        return engine.generate(prompt, params, async (ev) => {
          if (inject && ev.index >= 6) throw new Error('injected fault: device lost');
          await onTokens?.(ev);
        });
      },
    };
    const counted = await countScriptCalls();
    try {
      const { ids, streams } = await runJobs(flaky, PROMPTS);
      for (const [i, evs] of streams.entries()) {
        expect(evs.filter((e) => e.event.type === 'start').map((e) => e.event.attempt)).toEqual([1, 2]);
        expect(evs.filter((e) => e.event.type === 'retry')).toHaveLength(1);
        // attempt 1 published indexes 0..5 at most, attempt 2 only what was missing
        for (const { event } of evs) {
          if (event.type !== 'tokens') continue;
          if (event.attempt === 1) expect(event.index + event.ids.length).toBeLessThanOrEqual(6);
        }
        expect((await usageOf(redis, 'acme', ids[i])).map((u) => [u.attempt, u.status])).toEqual([
          [1, 'failed'],
          [2, 'completed'],
        ]);
      }
      const entries = streams.reduce((n, evs) => n + evs.length, 0);
      expect((await counted.calls()).length).toBeLessThan(entries);
    } finally {
      counted.stop();
    }
  });
});
