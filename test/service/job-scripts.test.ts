/**
 * The job-event scripts of the contract, on a real Redis: run by SHA, idempotent per kind; the
 * coalesced script (several jobs' events in one call) writes exactly what one call per event writes.
 */
import { createHash } from 'node:crypto';
import {
  decodeEvent,
  type JobEventWrite,
  keys,
  PUBLISH_EVENT_LUA,
  PUBLISH_EVENTS_LUA,
  progressKeys,
  publishJobEvent,
  publishJobEvents,
  type StreamEvent,
  withJobScripts,
} from '@ppsd/contract';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let redis: Redis;
beforeAll(async () => {
  server = await startRedis();
  redis = new Redis(server.url);
});
afterAll(async () => {
  redis?.disconnect();
  await server?.stop();
});

const events = async (jobId: string) =>
  (await redis.xrange(keys.jobEvents(jobId), '-', '+')).map(([, f]) => decodeEvent(f) as StreamEvent);

it('runs by SHA (EVALSHA), registered once per connection', async () => {
  const r = withJobScripts(withJobScripts(redis));
  const ev: StreamEvent = { type: 'start', attempt: 1, workerId: 'w', decoder: 'ar', queuedMs: 0 };
  // the first call loads the script (EVALSHA answers NOSCRIPT, ioredis sends EVAL once) ...
  expect(await publishJobEvent(r, 'j1', ev, 'start', { attempt: 1 })).toMatch(/^\d+-\d+$/);
  await redis.config('RESETSTAT');
  // ... every later one runs it by SHA
  await publishJobEvent(r, 'j1', ev, 'start', { attempt: 1 });
  await publishJobEvent(r, 'j1', ev, 'start', { attempt: 1 });
  const sha = createHash('sha1').update(PUBLISH_EVENT_LUA).digest('hex');
  expect(await redis.script('EXISTS', sha)).toEqual([1]);
  const stats = (await redis.info('commandstats')) as string;
  expect(stats).toMatch(/cmdstat_evalsha:calls=2/);
  expect(stats).not.toMatch(/cmdstat_eval:calls=[1-9]/);
});

it('retry, start and terminal events are each written once per attempt; nothing after the end', async () => {
  const r = withJobScripts(redis);
  const id = 'j2';
  const retry: StreamEvent = { type: 'retry', attempt: 1, reason: 'lost' };
  const start: StreamEvent = { type: 'start', attempt: 2, workerId: 'w', decoder: 'ar', queuedMs: 0 };
  expect(await publishJobEvent(r, id, retry, 'retry', { attempt: 2 })).not.toBeNull();
  expect(await publishJobEvent(r, id, retry, 'retry', { attempt: 2 })).toBeNull();
  await publishJobEvent(r, id, start, 'start', { attempt: 2 });
  const tokens: StreamEvent = { type: 'tokens', attempt: 2, index: 0, ids: [5], text: 'a' };
  await publishJobEvent(r, id, tokens, 'tokens', { attempt: 2, tokenEnd: 1, charsEnd: 1 });
  expect(await publishJobEvent(r, id, tokens, 'tokens', { attempt: 2, tokenEnd: 1, charsEnd: 1 })).toBeNull();
  const end: StreamEvent = { type: 'error', attempt: 2, message: 'x', code: 'c', finishReason: 'error' };
  expect(await publishJobEvent(r, id, end, 'terminal', { attempt: 2 })).not.toBeNull();
  expect(await publishJobEvent(r, id, end, 'terminal', { attempt: 2 })).toBeNull();
  expect(await publishJobEvent(r, id, retry, 'retry', { attempt: 3 })).toBeNull();
  expect((await events(id)).map((e) => e.type)).toEqual(['retry', 'start', 'tokens', 'error']);
  expect(await redis.hget(progressKeys.jobProgress(id), 'done')).toBe('1');
  expect(await redis.ttl(keys.jobEvents(id))).toBeGreaterThan(0);
});

/** Calls of each command since the last RESETSTAT (INFO commandstats). */
async function calls(command: string): Promise<number> {
  const stats = (await redis.info('commandstats')) as string;
  return Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
}

const tokens = (attempt: number, index: number, ids: number[]): StreamEvent => ({
  type: 'tokens',
  attempt,
  index,
  ids,
  text: ids.map((i) => String.fromCharCode(97 + (i % 26))).join(''),
});

/**
 * Writes of three jobs as two attempts would make them: starts, tokens, a retry whose attempt re-sends
 * indexes already published, starts and tokens sent twice (an ioredis re-send), a terminal event, and
 * writes after it. `job` names the job within the set, so two sets can use different ids.
 */
function scenario(job: (n: number) => string): JobEventWrite[] {
  const perJob = [0, 1, 2].map((n) => {
    const w: JobEventWrite[] = [];
    const jobId = job(n);
    const start: StreamEvent = { type: 'start', attempt: 1, workerId: 'w', decoder: 'ar', queuedMs: 0 };
    w.push({ jobId, event: start, kind: 'start', attempt: 1 });
    w.push({ jobId, event: start, kind: 'start', attempt: 1 }); // duplicate
    w.push({ jobId, event: tokens(1, 0, [1, 2]), kind: 'tokens', attempt: 1, tokenEnd: 2, charsEnd: 2 });
    w.push({ jobId, event: tokens(1, 2, [3]), kind: 'tokens', attempt: 1, tokenEnd: 3, charsEnd: 3 });
    w.push({ jobId, event: tokens(1, 2, [3]), kind: 'tokens', attempt: 1, tokenEnd: 3, charsEnd: 3 }); // re-sent
    const retry: StreamEvent = { type: 'retry', attempt: 1, reason: 'lost' };
    w.push({ jobId, event: retry, kind: 'retry', attempt: 2 });
    w.push({ jobId, event: retry, kind: 'retry', attempt: 2 }); // duplicate
    // attempt 2 regenerates: indexes 0..2 are published already, only 3.. are new
    w.push({ jobId, event: tokens(2, 0, [1, 2, 3]), kind: 'tokens', attempt: 2, tokenEnd: 3, charsEnd: 3 });
    w.push({ jobId, event: tokens(2, 3, [4, 5]), kind: 'tokens', attempt: 2, tokenEnd: 5, charsEnd: 5 });
    if (n === 1) return w; // job 1 stays open
    const end: StreamEvent = { type: 'error', attempt: 2, message: 'x', code: 'c', finishReason: 'error' };
    w.push({ jobId, event: end, kind: 'terminal', attempt: 2 });
    w.push({ jobId, event: end, kind: 'terminal', attempt: 2 }); // duplicate
    w.push({ jobId, event: tokens(2, 5, [6]), kind: 'tokens', attempt: 2, tokenEnd: 6, charsEnd: 6 }); // after the end
    return w;
  });
  // interleave the jobs, as concurrent attempts do: the first write of each, then the second ...
  const longest = Math.max(...perJob.map((w) => w.length));
  return Array.from({ length: longest }, (_, i) => perJob.flatMap((w) => w.slice(i, i + 1))).flat();
}

/** What a job's keys hold: its events (without entry ids) and its progress hash. */
async function stateOf(jobId: string) {
  return { events: await events(jobId), progress: await redis.hgetall(progressKeys.jobProgress(jobId)) };
}

it('the coalesced script writes several jobs in one call exactly as one call per event does', async () => {
  const r = withJobScripts(redis);
  const single = (n: number) => `single-${n}`;
  const batched = (n: number) => `batched-${n}`;
  const one: (string | null)[] = [];
  for (const w of scenario(single)) one.push(await publishJobEvent(r, w.jobId, w.event, w.kind, w));
  await publishJobEvents(r, []); // loads nothing, sends nothing
  await publishJobEvents(r, scenario(batched).slice(0, 1)); // loads the script (EVAL once)
  await redis.config('RESETSTAT');
  const rest = await publishJobEvents(r, scenario(batched).slice(1));
  // one script call (by SHA) for every remaining write of all three jobs
  expect(await calls('evalsha')).toBe(1);
  expect(await calls('eval')).toBe(0);
  expect(await calls('xadd')).toBeGreaterThan(1);
  const sha = createHash('sha1').update(PUBLISH_EVENTS_LUA).digest('hex');
  expect(await redis.script('EXISTS', sha)).toEqual([1]);
  // the same duplicates skipped at the same places, the same streams and progress
  const many = [one[0], ...rest];
  expect(many.map((id) => id !== null)).toEqual(one.map((id) => id !== null));
  expect(one.filter((id) => id === null).length).toBeGreaterThan(0);
  for (const n of [0, 1, 2]) expect(await stateOf(batched(n))).toEqual(await stateOf(single(n)));
  expect((await events(batched(0))).map((e) => e.type)).toEqual([
    'start',
    'tokens',
    'tokens',
    'retry',
    'tokens',
    'error',
  ]);
  expect(await redis.hget(progressKeys.jobProgress(batched(1)), 'tokens')).toBe('5');
  expect(await redis.ttl(keys.jobEvents(batched(2)))).toBeGreaterThan(0);
  expect(await redis.ttl(keys.jobEvents(batched(1)))).toBe(-1); // still open
});

it('the coalesced script wakes each job that got an entry once per entry, on its own channel', async () => {
  const r = withJobScripts(redis);
  const sub = new Redis(server.url);
  try {
    const got: [string, string][] = [];
    sub.on('message', (channel: string, id: string) => got.push([channel, id]));
    await sub.subscribe(keys.jobWake('wake-a'), keys.jobWake('wake-b'));
    const ids = await publishJobEvents(r, [
      { jobId: 'wake-a', event: tokens(1, 0, [1]), kind: 'tokens', attempt: 1, tokenEnd: 1, charsEnd: 1 },
      { jobId: 'wake-b', event: tokens(1, 0, [2]), kind: 'tokens', attempt: 1, tokenEnd: 1, charsEnd: 1 },
      { jobId: 'wake-a', event: tokens(1, 0, [1]), kind: 'tokens', attempt: 1, tokenEnd: 1, charsEnd: 1 },
      { jobId: 'wake-a', event: tokens(1, 1, [3]), kind: 'tokens', attempt: 1, tokenEnd: 2, charsEnd: 2 },
    ]);
    expect(ids[2]).toBeNull(); // a later write of the call sees what an earlier one wrote
    const expected: [string, string][] = [
      [keys.jobWake('wake-a'), ids[0]!],
      [keys.jobWake('wake-b'), ids[1]!],
      [keys.jobWake('wake-a'), ids[3]!],
    ];
    for (let i = 0; got.length < expected.length && i < 200; i++)
      await new Promise((res) => setTimeout(res, 10));
    expect(got).toEqual(expected);
  } finally {
    sub.disconnect();
  }
});
