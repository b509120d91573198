/**
 * Worker bookkeeping keys (added next to ./keys; same hash-tag design). They make the worker's writes
 * idempotent across ioredis command re-sends after a reconnect and across BullMQ retries of a job.
 */

export const progressKeys = {
  /**
   * Hash per job: `tokens` (completion tokens published to the events stream), `chars` (text length
   * published), `attempt` (attempt that last wrote), `done` ('1' once a terminal event is in the stream).
   * Shares the job's slot with keys.jobEvents so publish + progress update are one atomic script.
   */
  jobProgress: (jobId: string) => `ppsd:{job:${jobId}}:progress`,
  /** Set once the usage record of one attempt is written (tenant slot: written with usage + settlement). */
  usageWritten: (tenant: string, jobId: string, attempt: number) =>
    `ppsd:{tenant:${tenant}}:usage-written:${jobId}:${attempt}`,
} as const;

/** How long the per-attempt usage guard is kept (longer than any retry of a job can take). */
export const USAGE_GUARD_TTL_SECONDS = 7 * 24 * 3600;
