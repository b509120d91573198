/**
 * The API's coalesced stream reads (apps/api/src/adapters/stream-reads.ts) on a real Redis: the reads
 * of one event-loop turn are one XREAD over their streams, exclusive cursors as with XRANGE, a cursor
 * Redis refuses fails only its own read, and followers woken together by one coalesced worker write
 * read together (fewer read commands than follower wake-ups).
 */
import { randomUUID } from 'node:crypto';
import { type JobEventWrite, keys, publishJobEvents, type StreamEvent, withJobScripts } from '@ppsd/contract';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobEvents } from '../../apps/api/src/adapters/redis-events';
import { createStreamReads, MAX_STREAMS_PER_READ, planReads } from '../../apps/api/src/adapters/stream-reads';
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

async function calls(command: string): Promise<number> {
  const stats = (await redis.info('commandstats')) as string;
  return Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
}

const tokens = (jobId: string, index: number): JobEventWrite => ({
  jobId,
  event: { type: 'tokens', attempt: 1, index, ids: [index], text: `t${index}` },
  kind: 'tokens',
  attempt: 1,
  tokenEnd: index + 1,
  charsEnd: index + 1,
});

const indexes = (entries: { event: StreamEvent }[]) =>
  entries.map((e) => (e.event.type === 'tokens' ? e.event.index : e.event.type));

describe('planReads', () => {
  const req = (jobId: string, count = 512) => ({
    jobId,
    after: undefined,
    count,
    resolve: () => {},
    reject: () => {},
  });

  it('puts each stream once per call, one COUNT per call, at most MAX_STREAMS_PER_READ streams', () => {
    const plan = planReads([req('a'), req('b'), req('a'), req('c', 8), req('b')]);
    expect(plan.map((c) => c.map((r) => `${r.jobId}/${r.count}`))).toEqual([
      ['a/512', 'b/512'],
      ['a/512', 'b/512'],
      ['c/8'],
    ]);
    const many = planReads(Array.from({ length: MAX_STREAMS_PER_READ + 1 }, (_, i) => req(`j${i}`)));
    expect(many.map((c) => c.length)).toEqual([MAX_STREAMS_PER_READ, 1]);
  });
});

describe('createStreamReads', () => {
  it("reads one turn's streams in one XREAD, after each cursor", async () => {
    const scripts = withJobScripts(redis);
    const [a, b, empty] = [randomUUID(), randomUUID(), randomUUID()];
    const ids = await publishJobEvents(scripts, [tokens(a, 0), tokens(a, 1), tokens(a, 2), tokens(b, 0)]);
    const reads = createStreamReads(redis);
    await redis.config('RESETSTAT');
    const [fromStart, afterFirst, ofB, none, capped] = await Promise.all([
      reads.read(a, undefined, 512),
      reads.read(a, ids[0]!, 512), // the same stream again: a second call
      reads.read(b, undefined, 512),
      reads.read(empty, undefined, 512),
      reads.read(b, ids[3]!, 512),
    ]);
    expect(indexes(fromStart)).toEqual([0, 1, 2]);
    expect(indexes(afterFirst)).toEqual([1, 2]);
    expect(indexes(ofB)).toEqual([0]);
    expect(none).toEqual([]);
    expect(capped).toEqual([]);
    expect(fromStart.map((e) => e.id)).toEqual(ids.slice(0, 3));
    // a, b, empty in one call; a's and b's second cursors in another
    expect(await calls('xread')).toBe(2);
    expect(await calls('xrange')).toBe(0);
    // a COUNT per read
    const [two] = await Promise.all([reads.read(a, undefined, 2), reads.read(b, undefined, 2)]);
    expect(indexes(two)).toEqual([0, 1]);
  });

  it('fails only the read whose cursor Redis refuses', async () => {
    const scripts = withJobScripts(redis);
    const a = randomUUID();
    await publishJobEvents(scripts, [tokens(a, 0)]);
    const reads = createStreamReads(redis);
    const [good, bad] = await Promise.allSettled([
      reads.read(a, undefined, 512),
      reads.read(randomUUID(), '99999999999999999999999-0', 512),
    ]);
    expect(good.status === 'fulfilled' && indexes(good.value)).toEqual([0]);
    expect(bad.status).toBe('rejected');
  });
});

describe('followers woken by one coalesced write', () => {
  it('read together: fewer read commands than wake-ups, every event in order', async () => {
    const FOLLOWERS = 8;
    const ROUNDS = 10;
    const subscriber = new Redis(server.url);
    // a long poll: only wake-ups make reads here
    const events = createJobEvents(redis, subscriber, { pollMs: 60_000 });
    const scripts = withJobScripts(redis);
    const jobs = Array.from({ length: FOLLOWERS }, () => randomUUID());
    const got = new Map<string, number[]>(jobs.map((j) => [j, []]));
    const ac = new AbortController();
    try {
      const following = jobs.map(async (j) => {
        for await (const e of events.follow(j, { signal: ac.signal }))
          if (e.event.type === 'tokens') got.get(j)!.push(e.event.index);
      });
      // every follower subscribed to its wake-up channel
      const subscribed = async () =>
        ((await redis.pubsub('NUMSUB', ...jobs.map((j) => keys.jobWake(j)))) as (string | number)[])
          .filter((_, i) => i % 2 === 1)
          .every((n) => Number(n) === 1);
      while (!(await subscribed())) await new Promise((r) => setTimeout(r, 5));
      await redis.config('RESETSTAT');
      for (let round = 0; round < ROUNDS; round++) {
        // one worker call writes a step of every job: its wake-ups reach the API together
        await publishJobEvents(
          scripts,
          jobs.map((j) => tokens(j, round)),
        );
        for (let i = 0; i < 500 && [...got.values()].some((g) => g.length <= round); i++)
          await new Promise((r) => setTimeout(r, 5));
      }
      const reads = (await calls('xread')) + (await calls('xrange'));
      for (const j of jobs) expect(got.get(j)).toEqual(Array.from({ length: ROUNDS }, (_, i) => i));
      // one read per follower and wake-up without coalescing
      expect(reads).toBeLessThan(FOLLOWERS * ROUNDS);
      expect(await calls('xread')).toBeGreaterThan(0);
      ac.abort();
      events.close();
      await Promise.all(following);
    } finally {
      ac.abort();
      events.close();
      subscriber.disconnect();
    }
  });
});
