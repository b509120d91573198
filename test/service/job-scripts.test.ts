/** The one job-event script of the contract, on a real Redis: run by SHA, idempotent per kind. */
import { createHash } from 'node:crypto';
import {
  decodeEvent,
  keys,
  PUBLISH_EVENT_LUA,
  progressKeys,
  publishJobEvent,
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
