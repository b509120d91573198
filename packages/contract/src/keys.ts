/**
 * Redis key design, Redis Cluster compatible: every key a single command touches together shares a
 * hash tag ({...}), so a job's keys live in one slot and a tenant's keys in another.
 */

/** BullMQ prefix; the hash tag keeps all of a queue's keys in one cluster slot. */
export const QUEUE_PREFIX = '{ppsd}';

/** One BullMQ queue per model; the BullMQ job id is the public job id. */
export const queueName = (modelId: string): string => `ppsd-generate-${modelId}`;

export const keys = {
  /** Redis Stream of StreamEvent entries for one job; entry id = SSE id = resume cursor. */
  jobEvents: (jobId: string) => `ppsd:{job:${jobId}}:events`,
  /** Pub/sub channel: a message (the new entry id) each time the job's stream grows. */
  jobWake: (jobId: string) => `ppsd:job-wake:${jobId}`,
  /** Pub/sub channel every worker listens on: the message is a job id to cancel. */
  cancelChannel: 'ppsd:cancel',
  /** Set to '1' when a job was asked to cancel (survives a worker restart; checked at job start). */
  jobCancelled: (jobId: string) => `ppsd:{job:${jobId}}:cancelled`,
  /** Idempotency-Key -> job id, per tenant. */
  idempotency: (tenant: string, key: string) => `ppsd:{tenant:${tenant}}:idem:${key}`,
  /** Redis Stream of UsageRecord entries per tenant (entry ids are ms timestamps: XRANGE by time). */
  tenantUsage: (tenant: string) => `ppsd:{tenant:${tenant}}:usage`,
  /** Hash: tokens reserved by admitted, unfinished jobs of a tenant ('reserved') and the limit ('limit'). */
  tenantQuota: (tenant: string) => `ppsd:{tenant:${tenant}}:quota`,
  /** Hash jobId -> reserved tokens, so settlement is idempotent across retries. */
  tenantReservations: (tenant: string) => `ppsd:{tenant:${tenant}}:reservations`,
  /** Hash key prefix -> JSON ApiKeyRecord (HMAC of the key, never the key; see ./api-keys). */
  apiKeys: 'ppsd:api-keys',
  /** Hash admin key prefix -> JSON ApiKeyRecord of an admin key (same hashing, never valid on /v1/). */
  adminKeys: 'ppsd:admin-keys',
  /** Redis Stream of AuditEntry (field `a`): every admin API action, who, what and when. */
  adminAudit: 'ppsd:admin-audit',
  /** Hash tenant -> JSON TenantRecord. */
  tenants: 'ppsd:tenants',
  /** Hash workerId -> JSON WorkerHeartbeat; entries older than WORKER_STALE_MS are not ready. */
  workers: (modelId: string) => `ppsd:workers:${modelId}`,
  /** Hash of monotonically increasing counters the worker adds to and the API exposes on /metrics. */
  metrics: (modelId: string) => `ppsd:metrics:${modelId}`,
} as const;

/** How long a job's event stream is kept after the job ends (replay window for reconnecting clients). */
export const EVENTS_TTL_SECONDS = 24 * 3600;
/** Upper bound on a job's event stream length (XADD MAXLEN ~). */
export const EVENTS_MAX_LEN = 100_000;
/**
 * A worker that has not refreshed its heartbeat (every PPSD_HEARTBEAT_MS, default 1 s) for this long is
 * considered gone: /readyz turns 503 within this time of the last worker dying.
 */
export const WORKER_STALE_MS = 4_000;
/** Upper bound on the admin audit stream (XADD MAXLEN ~). */
export const AUDIT_MAX_LEN = 1_000_000;

export interface WorkerHeartbeat {
  workerId: string;
  modelId: string;
  ready: boolean;
  decoders: string[];
  devices: string[];
  /** The deepest ppsd / spd pipeline a job may ask of this worker (`speculation.stages`). */
  maxStages?: number;
  busy: number; // jobs in flight
  at: number; // ms epoch
  /** The engine scheduler's load at this beat (absent while the engine is not open yet). */
  scheduler?: WorkerSchedulerLoad;
}

/** The heartbeats of `keys.workers(model)` (HGETALL) written within WORKER_STALE_MS of `now`. */
export function freshHeartbeats(hash: Record<string, string>, now: number): WorkerHeartbeat[] {
  return Object.values(hash).flatMap((v) => {
    try {
      const h = JSON.parse(v) as WorkerHeartbeat;
      return now - h.at <= WORKER_STALE_MS ? [h] : [];
    } catch {
      return [];
    }
  });
}

/**
 * PPSD_MAX_BATCH when unset: the sequences a worker's engine batches (and the jobs it holds at once); the
 * autoscaler counts a worker's capacity with the same number.
 */
export const DEFAULT_MAX_BATCH = 16;

/** What a worker's engine runs at one heartbeat (the API's num_requests_* and kv_cache_usage_perc). */
export interface WorkerSchedulerLoad {
  /** Sequences admitted and generating. */
  running: number;
  /** Sequences the worker took but its engine has not admitted yet (no batch slot or KV memory). */
  waiting: number;
  /** Most sequences one batched step runs. */
  maxBatch: number;
  /** KV memory held by running sequences, and the pool's budget (bytes; budget 0 = not reported). */
  kvUsedBytes: number;
  kvBudgetBytes: number;
}
