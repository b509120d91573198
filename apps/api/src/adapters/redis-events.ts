/**
 * Reading a job's event stream (`keys.jobEvents`) and following it live. One subscriber connection per
 * process carries every wake-up (`keys.jobWake(id)` channels, subscribed while someone follows the job,
 * reference counted); after each wake-up the follower re-reads with XRANGE from its cursor, and a slow
 * timer re-reads anyway in case a wake-up was missed (e.g. during a reconnect). No blocking XREAD per
 * client: hundreds of concurrent streams cost one connection plus short reads, and the reads of all
 * followers woken in one event-loop turn are one XREAD over their streams (`stream-reads.ts`).
 */
import { isTerminal, keys, publishJobEvent, type StreamEvent, withJobScripts } from '@ppsd/contract';
import type { Redis } from 'ioredis';
import { createStreamReads, readRange, type StreamEntry } from './stream-reads';

export type { StreamEntry } from './stream-reads';

export const STREAM_ID = /^\d+-\d+$/;

interface Watch {
  pending: boolean;
  wake?: () => void;
}

export interface FollowOptions {
  /** Exclusive cursor: entries after this id. */
  after?: string;
  signal?: AbortSignal;
  /**
   * Called when a safety-net tick found nothing new; may return a terminal entry to end the follow
   * (the app uses it to notice a job BullMQ gave up on without any worker writing its end).
   */
  onIdle?: (idleMs: number) => Promise<StreamEntry | undefined>;
  /** Batch size of each XRANGE. */
  count?: number;
}

/** Writes a terminal event unless the stream already has one (atomic: the worker may be racing). */

export function createJobEvents(redis: Redis, subscriber: Redis, opts: { pollMs: number }) {
  const scripts = withJobScripts(redis);
  const reads = createStreamReads(redis);
  const watchers = new Map<string, Set<Watch>>();

  const onMessage = (channel: string) => {
    const set = watchers.get(channel);
    if (!set) return;
    for (const w of set) {
      w.pending = true;
      w.wake?.();
    }
  };
  subscriber.on('message', onMessage);

  async function watch(jobId: string): Promise<{ w: Watch; close: () => void }> {
    const channel = keys.jobWake(jobId);
    const w: Watch = { pending: false };
    let set = watchers.get(channel);
    if (!set) {
      set = new Set();
      watchers.set(channel, set);
      set.add(w);
      // A failed subscribe only costs latency: the poll timer still re-reads.
      await subscriber.subscribe(channel).catch(() => undefined);
    } else set.add(w);
    return {
      w,
      close: () => {
        const s = watchers.get(channel);
        if (!s) return;
        s.delete(w);
        if (s.size === 0) {
          watchers.delete(channel);
          subscriber.unsubscribe(channel).catch(() => undefined);
        }
      },
    };
  }

  const api = {
    /** Entries after `after` (exclusive; from the start when absent), oldest first. */
    read(jobId: string, after?: string, count?: number): Promise<StreamEntry[]> {
      return readRange(redis, jobId, after, count);
    },

    /** Follows the stream from `after` until (and including) its terminal event, or until aborted. */
    async *follow(jobId: string, o: FollowOptions = {}): AsyncGenerator<StreamEntry> {
      const batch = o.count ?? 512;
      const { w, close } = await watch(jobId);
      let cursor = o.after;
      let idleSince = Date.now();
      try {
        for (;;) {
          if (o.signal?.aborted) return;
          w.pending = false;
          const entries = await reads.read(jobId, cursor, batch);
          for (const e of entries) {
            cursor = e.id;
            yield e;
            if (isTerminal(e.event)) return;
          }
          if (entries.length > 0) idleSince = Date.now();
          if (entries.length === batch || w.pending) continue;
          const woke = await new Promise<boolean>((resolve) => {
            const timer = setTimeout(() => finish(false), opts.pollMs);
            const onAbort = () => finish(true);
            function finish(v: boolean) {
              clearTimeout(timer);
              o.signal?.removeEventListener('abort', onAbort);
              w.wake = undefined;
              resolve(v);
            }
            w.wake = () => finish(true);
            o.signal?.addEventListener('abort', onAbort, { once: true });
            if (w.pending) finish(true);
          });
          if (!woke && o.onIdle) {
            // Re-read first: the end may have landed just now.
            const late = await reads.read(jobId, cursor, batch);
            if (late.length === 0) {
              const end = await o.onIdle(Date.now() - idleSince);
              if (end) {
                yield end;
                return;
              }
            } else {
              w.pending = true;
            }
          }
        }
      } finally {
        close();
      }
    },

    /**
     * Appends a terminal event written by the API itself (a job cancelled before it ran, or one BullMQ
     * gave up on); returns its entry, or undefined when the stream already ended.
     */
    async end(jobId: string, event: StreamEvent): Promise<StreamEntry | undefined> {
      const id = await publishJobEvent(scripts, jobId, event, 'terminal', { attempt: event.attempt });
      return id ? { id, event } : undefined;
    },

    /** Channels currently subscribed (tests check that followers clean up). */
    subscribedCount: () => watchers.size,

    close() {
      subscriber.off('message', onMessage);
      for (const set of watchers.values()) for (const w of set) w.wake?.();
      watchers.clear();
    },
  };
  return api;
}

export type JobEvents = ReturnType<typeof createJobEvents>;
