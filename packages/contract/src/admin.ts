/**
 * What the admin API stores and answers: tenant and key records (Redis), audit entries, usage rows. Pure
 * types and constants (no Node imports), so the admin CLI and the web console use them too.
 */

export interface TenantRecord {
  id: string;
  createdAt: number;
  /** A disabled tenant's keys are refused on /v1/ (401) until it is enabled again. */
  disabled?: boolean;
  /** Models the tenant may use; absent = every served model. */
  models?: string[];
}

/** One API key (tenant or admin), keyed by its prefix in keys.apiKeys / keys.adminKeys. */
export interface ApiKeyRecord {
  /** Public handle (`ppsd_<id>`, `ppsd_admin_<id>`, `cfg_…`): shown in listings, used to revoke. */
  prefix: string;
  /** Owning tenant ('' for admin keys). */
  tenant: string;
  /** HMAC-SHA256(PPSD_KEY_SECRET, key), hex. */
  hash: string;
  createdAt: number;
  /** 'config': PPSD_BOOTSTRAP_KEYS / PPSD_ADMIN_KEYS; 'issued': created by the API (shown once). */
  source: 'config' | 'issued';
  /** Who created it (admin key prefix, or 'bootstrap'). */
  createdBy?: string;
  revokedAt?: number;
  revokedBy?: string;
}

/** A key as listings show it (no hash). */
export type ApiKeyView = Omit<ApiKeyRecord, 'hash'> & { active: boolean };

/** A tenant with its limits, as GET /admin/tenants answers. */
export interface TenantView extends TenantRecord {
  active_keys: number;
  /** prompt + completion tokens per quota period; null = the server default (PPSD_TENANT_TOKEN_QUOTA). */
  token_quota: number | null;
  /** Admitted, unfinished jobs at most; null = the server default (PPSD_TENANT_MAX_JOBS). 0 = unlimited. */
  job_limit: number | null;
  /** What applies now (the tenant's own setting or the default). */
  effective: { token_quota: number; job_limit: number };
  used_tokens: number;
  reserved_tokens: number;
  unfinished_jobs: number;
}

/** One admin action: who (admin key prefix), what (method, path, action, target), when, the outcome. */
export interface AuditEntry {
  id: string; // stream entry id (ms-seq)
  at: number;
  actor: string;
  action: string;
  method: string;
  path: string;
  target?: string;
  status: number;
  detail?: Record<string, unknown>;
}

/** One row of the billing export: a tenant's usage of one model on one UTC day. */
export interface UsageRow {
  tenant: string;
  model: string;
  day: string; // YYYY-MM-DD (UTC)
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Distinct jobs with a usage record that day (a retried job counts once). */
  jobs: number;
  draft_tokens_proposed: number;
  draft_tokens_accepted: number;
  device_seconds: number;
}

/** Columns of GET /admin/usage?format=csv, in order. */
export const USAGE_CSV_COLUMNS = [
  'tenant',
  'model',
  'day',
  'prompt_tokens',
  'completion_tokens',
  'jobs',
] as const satisfies readonly (keyof UsageRow)[];

export interface UsageReport {
  object: 'usage_report';
  from: number;
  to: number;
  tenant: string | null;
  data: UsageRow[];
}

/** Live state of one served model for the operator views: queue, workers (device plans), counters. */
export interface ModelStats {
  model: string;
  queue: { waiting: number; active: number; delayed: number; failed: number; completed: number };
  workers: {
    workerId: string;
    ready: boolean;
    devices: string[];
    decoders: string[];
    busy: number;
    age_ms: number;
    /** The engine's batch at the worker's last beat (null before its engine is open). */
    scheduler: {
      running: number;
      waiting: number;
      max_batch: number;
      kv_used_bytes: number;
      kv_budget_bytes: number;
    } | null;
  }[];
  /** The worker counters behind /metrics (keys.metrics(model)), as numbers. */
  counters: Record<string, number>;
}

export interface StatsResponse {
  object: 'stats';
  at: number;
  models: ModelStats[];
}
