/**
 * Worker heartbeat: a WorkerHeartbeat JSON under keys.workers(model), refreshed every few seconds.
 * `ready` becomes true only after the package verified, the engine opened and the one-token warm-up
 * generation succeeded; the API's /readyz and admission read it. Removed on a clean exit.
 *
 * Once the engine is open (`trackScheduler`), every beat also carries the scheduler's load (running and
 * waiting sequences, KV pool use, max batch) and adds the batched steps the engine ran since the last
 * beat to the model's metrics hash (`SCHEDULER_METRIC_PREFIX.batchSteps<size>`), for the API's /metrics.
 */
import {
  keys,
  SCHEDULER_METRIC_PREFIX,
  type WorkerHeartbeat,
  type WorkerSchedulerLoad,
} from '@ppsd/contract';
import type { SchedulerStats } from '@ppsd/engine';
import type { Redis } from 'ioredis';

/** Where the heartbeat reads the engine's scheduler load (`engine.schedulerStats()`; tests stub it). */
export type SchedulerStatsSource = () => SchedulerStats;

/** The gauges of a heartbeat from the engine's stats. */
export function schedulerLoad(stats: SchedulerStats): WorkerSchedulerLoad {
  return {
    running: stats.running,
    waiting: stats.waiting,
    maxBatch: stats.maxBatch,
    kvUsedBytes: stats.kvUsedBytes,
    kvBudgetBytes: stats.kvBudgetBytes,
  };
}

/**
 * What each batch size's cumulative step count grew by since `published` (sizes that did not grow are
 * left out; a count below the published one, which a monotonic engine never reports, adds nothing).
 */
export function stepDeltas(
  steps: Record<number, number>,
  published: Record<number, number>,
): Record<number, number> {
  const delta: Record<number, number> = {};
  for (const [key, count] of Object.entries(steps)) {
    const size = Number(key);
    if (!(Number.isInteger(size) && size >= 1 && Number.isInteger(count))) continue;
    const grew = count - (published[size] ?? 0);
    if (grew > 0) delta[size] = grew;
  }
  return delta;
}

export class Heartbeat {
  private timer: NodeJS.Timeout | null = null;
  private inflight: Promise<void> | null = null;
  private again = false;
  private state: WorkerHeartbeat;
  private scheduler: SchedulerStatsSource | null = null;
  /** stepsByBatchSize as last added to the metrics hash. */
  private publishedSteps: Record<number, number> = {};

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

  /** From now on every beat reports the engine's scheduler load (called once the engine is open). */
  trackScheduler(source: SchedulerStatsSource): Promise<void> {
    this.scheduler = source;
    return this.beat();
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
    const stats = this.readScheduler();
    if (stats) this.state.scheduler = schedulerLoad(stats);
    const beat = this.redis
      .hset(keys.workers(this.state.modelId), this.state.workerId, JSON.stringify(this.state))
      .then(
        () => {},
        (err: Error) => this.log(`heartbeat: ${err.message}`),
      );
    this.inflight = Promise.all([beat, stats && this.addSteps(stats)])
      .then(() => {})
      .finally(() => {
        this.inflight = null;
        if (this.again && this.timer) {
          this.again = false;
          void this.beat();
        }
      });
    return this.inflight;
  }

  /** Stops beating and removes this worker's entry (best effort); the last batched steps are added. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.state.ready = false;
    const flush = (async () => {
      await this.inflight;
      const stats = this.readScheduler();
      if (stats) await this.addSteps(stats);
    })();
    const del = flush.then(() =>
      this.redis.hdel(keys.workers(this.state.modelId), this.state.workerId).catch(() => 0),
    );
    // Redis gone: give up after a moment, the entry goes stale after WORKER_STALE_MS
    await Promise.race([del, new Promise((r) => setTimeout(r, 2000).unref())]);
  }

  private readScheduler(): SchedulerStats | null {
    if (!this.scheduler) return null;
    try {
      return this.scheduler();
    } catch (err) {
      this.log(`heartbeat: scheduler stats: ${(err as Error).message}`);
      return null;
    }
  }

  /** HINCRBY of each batch size's new steps; kept for the next beat when the write fails. */
  private async addSteps(stats: SchedulerStats): Promise<void> {
    const delta = stepDeltas(stats.stepsByBatchSize, this.publishedSteps);
    const sizes = Object.keys(delta).map(Number);
    if (sizes.length === 0) return;
    const m = keys.metrics(this.state.modelId);
    const tx = this.redis.multi();
    for (const size of sizes) tx.hincrby(m, `${SCHEDULER_METRIC_PREFIX.batchSteps}${size}`, delta[size]);
    try {
      const replies = await tx.exec();
      const failed =
        replies?.find(([err]) => err)?.[0] ?? (replies ? null : new Error('transaction aborted'));
      if (failed) throw failed;
      const next = { ...this.publishedSteps };
      for (const size of sizes) next[size] = (next[size] ?? 0) + delta[size];
      this.publishedSteps = next;
    } catch (err) {
      this.log(`heartbeat: batch steps: ${(err as Error).message}`);
    }
  }
}
