/**
 * Cancellation: one subscriber connection on keys.cancelChannel for the whole worker. A message is a job
 * id; if this worker owns that job, its AbortController fires and the engine stops within one decoding
 * step. Broadcasts sent while Redis was unreachable are not lost: the API also sets keys.jobCancelled,
 * which is checked at job start and for every owned job each time the subscriber (re)connects.
 */
import { keys } from '@ppsd/contract';
import { Redis, type RedisOptions } from 'ioredis';

export class CancelRegistry {
  private readonly owned = new Map<string, AbortController>();
  /** Per job: the job attempt's logger, so its cancel line carries the job's context. */
  private readonly jobLogs = new Map<string, (msg: string) => void>();
  private sub: Redis | null = null;

  constructor(
    private readonly redis: Redis,
    private readonly log: (msg: string) => void = () => {},
  ) {}

  /** Opens the subscriber (a duplicate of the command connection's options). */
  async start(url: string, options: RedisOptions = {}): Promise<void> {
    const sub = new Redis(url, { ...options, maxRetriesPerRequest: null, lazyConnect: true });
    this.sub = sub;
    sub.on('error', () => {}); // reconnects by itself; the command connection logs outages
    sub.on('message', (channel: string, jobId: string) => {
      if (channel === keys.cancelChannel) this.cancel(jobId, 'cancel broadcast');
    });
    sub.on('ready', () => {
      void this.recheck();
    });
    await sub.connect();
    await sub.subscribe(keys.cancelChannel);
  }

  /** Registers a job this worker now runs; returns the controller whose signal goes to the engine. */
  register(jobId: string, log?: (msg: string) => void): AbortController {
    const ac = new AbortController();
    this.owned.set(jobId, ac);
    if (log) this.jobLogs.set(jobId, log);
    else this.jobLogs.delete(jobId);
    return ac;
  }

  release(jobId: string, ac: AbortController): void {
    if (this.owned.get(jobId) !== ac) return;
    this.owned.delete(jobId);
    this.jobLogs.delete(jobId);
  }

  /** True when the job was asked to cancel (durable flag set by the API). */
  async isCancelled(jobId: string): Promise<boolean> {
    return (await this.redis.exists(keys.jobCancelled(jobId))) === 1;
  }

  cancel(jobId: string, why: string): boolean {
    const ac = this.owned.get(jobId);
    if (!ac || ac.signal.aborted) return false;
    (this.jobLogs.get(jobId) ?? this.log)(`job ${jobId}: cancelling (${why})`);
    ac.abort(new Error('cancelled'));
    return true;
  }

  /** Aborts every owned job (drain deadline passed: the runner hands them back to the queue). */
  abortAll(why: string): number {
    let n = 0;
    for (const jobId of [...this.owned.keys()]) if (this.cancel(jobId, why)) n++;
    return n;
  }

  get size(): number {
    return this.owned.size;
  }

  private async recheck(): Promise<void> {
    for (const jobId of [...this.owned.keys()]) {
      try {
        if (await this.isCancelled(jobId)) this.cancel(jobId, 'cancelled flag');
      } catch {
        // Redis still flapping: the next 'ready' checks again
      }
    }
  }

  async stop(): Promise<void> {
    const sub = this.sub;
    this.sub = null;
    if (!sub) return;
    try {
      await sub.quit();
    } catch {
      sub.disconnect();
    }
  }
}
