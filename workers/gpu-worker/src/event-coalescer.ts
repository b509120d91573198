/**
 * Cross-job coalescing of stream writes. A batched engine step verifies a token for every running job at
 * once; written one script call per job, those writes cost one command each in ioredis and in Redis
 * (parse, script lookup, reply) for a few microseconds of work each. Here every write that becomes ready
 * within one event-loop turn goes out as one `ppsdPublishEvents` call.
 *
 * Why one turn (setImmediate): the engine thread's token messages of one step are delivered together
 * in one poll phase, and setImmediate runs right after it, so a step's events share a call without
 * holding any of them for longer than that turn. Each write is the same guarded Lua function as a single
 * `ppsdPublishEvent` (packages/contract/src/scripts.ts), so at-most-once per token index and the skips
 * of a retried attempt are unchanged; a call keeps the order of its writes, and calls run in order on
 * the one connection, so each job's events stay in order.
 */
import { type JobEventWrite, type JobScripts, publishJobEvents } from '@ppsd/contract';

/** Most events in one script call: bounds how long one call holds Redis (a few µs per event). */
export const MAX_EVENTS_PER_CALL = 64;

interface Pending {
  write: JobEventWrite;
  resolve: (id: string | null) => void;
  reject: (err: unknown) => void;
}

export class EventCoalescer {
  private pending: Pending[] = [];
  private scheduled = false;

  constructor(
    private readonly redis: JobScripts,
    private readonly maxPerCall = MAX_EVENTS_PER_CALL,
  ) {}

  /** Queues one write for this turn's call; resolves with its entry id, or null for a duplicate. */
  write(write: JobEventWrite): Promise<string | null> {
    return new Promise((resolve, reject) => {
      this.pending.push({ write, resolve, reject });
      if (this.scheduled) return;
      this.scheduled = true;
      setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    for (let i = 0; i < batch.length; i += this.maxPerCall)
      send(this.redis, batch.slice(i, i + this.maxPerCall));
  }
}

/** One call for `chunk`; a failed call fails each of its writes (their publishers keep the error). */
function send(redis: JobScripts, chunk: Pending[]): void {
  publishJobEvents(
    redis,
    chunk.map((p) => p.write),
  ).then(
    (ids) => {
      for (const [i, p] of chunk.entries()) p.resolve(ids[i]);
    },
    (err: unknown) => {
      for (const p of chunk) p.reject(err);
    },
  );
}
