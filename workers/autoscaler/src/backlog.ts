import { QUEUE_PREFIX, queueName } from '@ppsd/contract';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';

// The queue names and prefix are the contract's: the API enqueues and the workers consume the same ones.
export { QUEUE_PREFIX };

/** The queue a model's jobs go to (a configured model id is checked here, at the autoscaler's start). */
export function queueNameForModel(modelId: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(modelId)) {
    throw new Error(`invalid model id ${JSON.stringify(modelId)}: use letters, digits, '.', '_' and '-'`);
  }
  return queueName(modelId);
}

export interface QueueLoad {
  queue: string;
  waiting: number;
  prioritized: number;
  /** Delayed jobs whose time has come (they are about to move to waiting). */
  delayedReady: number;
  /** waiting + prioritized + delayedReady. */
  backlog: number;
  /** Jobs being processed (BullMQ `active`). */
  running: number;
}

export interface QueueLoadReader {
  read(now: number): Promise<QueueLoad[]>;
  close(): Promise<void>;
}

/**
 * Reads backlog and running counts of the given BullMQ queues over an existing ioredis connection
 * (the connection is shared and is not closed by `close()`).
 */
export function createQueueLoadReader(
  redis: Redis,
  queues: string[],
  prefix = QUEUE_PREFIX,
): QueueLoadReader {
  if (queues.length === 0) throw new Error('at least one queue is required');
  const handles = queues.map((name) => new Queue(name, { connection: redis, prefix }));
  return {
    async read(now: number): Promise<QueueLoad[]> {
      return Promise.all(
        handles.map(async (q) => {
          const counts = await q.getJobCounts('waiting', 'prioritized', 'active');
          // Jobs scheduled strictly before now + 1 ms, i.e. at or before now.
          const delayedReady = await q.getDelayedCount(Math.floor(now) + 1);
          const waiting = counts.waiting ?? 0;
          const prioritized = counts.prioritized ?? 0;
          return {
            queue: q.name,
            waiting,
            prioritized,
            delayedReady,
            backlog: waiting + prioritized + delayedReady,
            running: counts.active ?? 0,
          };
        }),
      );
    },
    async close(): Promise<void> {
      await Promise.all(handles.map((q) => q.close()));
    },
  };
}
