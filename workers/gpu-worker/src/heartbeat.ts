/**
 * Worker heartbeat: a WorkerHeartbeat JSON under keys.workers(model), refreshed every few seconds.
 * `ready` becomes true only after the package verified, the engine opened and the one-token warm-up
 * generation succeeded; the API's /readyz and admission read it. Removed on a clean exit.
 */
import { keys, type WorkerHeartbeat } from '@ppsd/contract';
import type { Redis } from 'ioredis';

export class Heartbeat {
  private timer: NodeJS.Timeout | null = null;
  private inflight: Promise<void> | null = null;
  private again = false;
  private state: WorkerHeartbeat;

  constructor(
    private readonly redis: Redis,
    init: { workerId: string; modelId: string; decoders: string[]; devices: string[] },
    private readonly intervalMs: number,
    private readonly log: (msg: string) => void = () => {},
  ) {
    this.state = { ...init, ready: false, busy: 0, at: Date.now() };
  }

  get snapshot(): WorkerHeartbeat {
    return { ...this.state };
  }

  start(): void {
    if (this.timer) return;
    void this.beat();
    this.timer = setInterval(() => void this.beat(), this.intervalMs);
    this.timer.unref();
  }

  update(patch: Partial<Omit<WorkerHeartbeat, 'workerId' | 'modelId' | 'at'>>): Promise<void> {
    Object.assign(this.state, patch);
    return this.beat();
  }

  addBusy(delta: number): void {
    this.state.busy = Math.max(0, this.state.busy + delta);
    void this.beat();
  }

  /** Writes the heartbeat; while Redis is unreachable at most one write is pending (then one more). */
  beat(): Promise<void> {
    if (this.inflight) {
      this.again = true;
      return this.inflight;
    }
    this.state.at = Date.now();
    this.inflight = this.redis
      .hset(keys.workers(this.state.modelId), this.state.workerId, JSON.stringify(this.state))
      .then(
        () => {},
        (err: Error) => this.log(`heartbeat: ${err.message}`),
      )
      .finally(() => {
        this.inflight = null;
        if (this.again && this.timer) {
          this.again = false;
          void this.beat();
        }
      });
    return this.inflight;
  }

  /** Stops beating and removes this worker's entry (best effort). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.state.ready = false;
    const del = this.redis.hdel(keys.workers(this.state.modelId), this.state.workerId).catch(() => 0);
    // Redis gone: give up after a moment, the entry goes stale after WORKER_STALE_MS
    await Promise.race([del, new Promise((r) => setTimeout(r, 2000).unref())]);
  }
}
