/**
 * Coalesced reads of job streams for the followers of `redis-events.ts`. The worker writes a batched
 * step's events of many jobs in one script call, whose PUBLISHes reach the subscriber together and wake
 * every follower in the same event-loop turn; each then wants the entries after its cursor. Instead of
 * one XRANGE per follower, the reads asked for in one turn go out as one non-blocking
 * `XREAD COUNT n STREAMS k1 k2 … id1 id2 …` (XREAD's ids are exclusive, like XRANGE's `(id`).
 *
 * The keys of one call belong to several jobs' hash-tag slots: like the worker's coalesced writes
 * (packages/contract/src/scripts.ts) this needs one primary holding every key, which the service's
 * Redis is. A call that fails (a cursor Redis refuses) is retried read by read, so it fails only the
 * follower whose read it was.
 */
import { decodeEvent, keys, type StreamEvent } from '@ppsd/contract';
import type { Redis } from 'ioredis';

export interface StreamEntry {
  id: string;
  event: StreamEvent;
}

type RawEntry = [id: string, fields: string[]];

interface ReadRequest {
  jobId: string;
  /** Exclusive cursor; undefined = from the start. */
  after: string | undefined;
  count: number;
  resolve: (entries: StreamEntry[]) => void;
  reject: (err: unknown) => void;
}

/** Most streams in one XREAD (bounds the reply one call makes Redis build). */
export const MAX_STREAMS_PER_READ = 64;

const toEntries = (raw: RawEntry[]): StreamEntry[] =>
  raw.map(([id, fields]) => ({ id, event: decodeEvent(fields) }));

/** One job's entries after `after`, at most `count` (XRANGE: the uncoalesced form of a read). */
export async function readRange(
  redis: Redis,
  jobId: string,
  after: string | undefined,
  count?: number,
): Promise<StreamEntry[]> {
  const start = after ? `(${after}` : '-';
  const raw = (
    count
      ? await redis.xrange(keys.jobEvents(jobId), start, '+', 'COUNT', count)
      : await redis.xrange(keys.jobEvents(jobId), start, '+')
  ) as RawEntry[];
  return toEntries(raw);
}

/**
 * Splits one turn's reads into XREAD calls: same COUNT, each stream once per call (two followers of one
 * job may stand at different cursors), at most `MAX_STREAMS_PER_READ` streams.
 */
export function planReads(reads: readonly ReadRequest[]): ReadRequest[][] {
  const calls: { count: number; jobs: Set<string>; reads: ReadRequest[] }[] = [];
  for (const r of reads) {
    let call = calls.find(
      (c) => c.count === r.count && !c.jobs.has(r.jobId) && c.reads.length < MAX_STREAMS_PER_READ,
    );
    if (!call) {
      call = { count: r.count, jobs: new Set(), reads: [] };
      calls.push(call);
    }
    call.jobs.add(r.jobId);
    call.reads.push(r);
  }
  return calls.map((c) => c.reads);
}

/** Reads gathered per event-loop turn (setImmediate: after the poll phase that delivered the wake-ups). */
export function createStreamReads(redis: Redis) {
  let pending: ReadRequest[] = [];
  let scheduled = false;

  async function xread(call: ReadRequest[]): Promise<void> {
    if (call.length === 1) {
      const [r] = call;
      return readRange(redis, r.jobId, r.after, r.count).then(r.resolve, r.reject);
    }
    let reply: [key: string, entries: RawEntry[]][] | null;
    try {
      reply = (await redis.xread(
        'COUNT',
        call[0].count,
        'STREAMS',
        ...call.map((r) => keys.jobEvents(r.jobId)),
        ...call.map((r) => r.after ?? '0-0'),
      )) as [string, RawEntry[]][] | null;
    } catch {
      // one bad cursor fails the whole call: read each on its own so only its follower sees the error
      await Promise.all(call.map((r) => xread([r])));
      return;
    }
    // XREAD answers only the streams that have new entries
    const byKey = new Map(reply?.map(([key, entries]) => [key, entries]) ?? []);
    for (const r of call) {
      try {
        r.resolve(toEntries(byKey.get(keys.jobEvents(r.jobId)) ?? []));
      } catch (err) {
        r.reject(err);
      }
    }
  }

  function flush(): void {
    scheduled = false;
    const reads = pending;
    pending = [];
    for (const call of planReads(reads)) void xread(call);
  }

  return {
    /** Entries of `jobId` after `after` (exclusive; from the start when absent), at most `count`. */
    read(jobId: string, after: string | undefined, count: number): Promise<StreamEntry[]> {
      return new Promise((resolve, reject) => {
        pending.push({ jobId, after, count, resolve, reject });
        if (scheduled) return;
        scheduled = true;
        setImmediate(flush);
      });
    },
  };
}
