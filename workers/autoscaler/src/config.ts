import { DEFAULT_MAX_BATCH } from '@ppsd/contract';
import { QUEUE_PREFIX, queueNameForModel } from './backlog';
import { DEFAULT_METRIC_NAME, DEFAULT_NAMESPACE } from './publisher';

/** Every problem with the environment at once, one per line. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

class Reader {
  readonly problems: string[] = [];
  constructor(private readonly env: Env) {}

  str(name: string, opts: { required: true }): string;
  str(name: string, opts?: { required?: false; fallback?: string }): string | undefined;
  str(name: string, opts: { required?: boolean; fallback?: string } = {}): string | undefined {
    const v = this.env[name]?.trim();
    if (v) return v;
    if (opts.required) this.problems.push(`${name} is required`);
    return opts.fallback;
  }

  num(name: string, fallback: number, check: { min?: number; integer?: boolean } = {}): number {
    const raw = this.env[name]?.trim();
    if (!raw) return fallback;
    const v = Number(raw);
    if (
      !Number.isFinite(v) ||
      (check.integer && !Number.isInteger(v)) ||
      (check.min !== undefined && v < check.min)
    ) {
      const kind = check.integer ? 'an integer' : 'a number';
      this.problems.push(
        `${name} must be ${kind}${check.min !== undefined ? ` >= ${check.min}` : ''}, got "${raw}"`,
      );
      return fallback;
    }
    return v;
  }

  bool(name: string, fallback: boolean): boolean {
    const raw = this.env[name]?.trim().toLowerCase();
    if (!raw) return fallback;
    if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
    if (['0', 'false', 'no', 'off'].includes(raw)) return false;
    this.problems.push(`${name} must be true or false, got "${this.env[name]}"`);
    return fallback;
  }

  list(name: string): string[] {
    return (this.env[name] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  }

  done(): void {
    if (this.problems.length > 0) throw new ConfigError(this.problems);
  }
}

function checkRedisUrl(r: Reader, url: string | undefined): void {
  if (!url) return;
  try {
    const u = new URL(url);
    if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
      r.problems.push(`PPSD_REDIS_URL must start with redis:// or rediss://, got ${u.protocol}//`);
    }
  } catch {
    r.problems.push('PPSD_REDIS_URL is not a valid URL');
  }
}

export interface PublisherConfig {
  redisUrl: string;
  queues: string[];
  asgName: string;
  region: string;
  namespace: string;
  metricName: string;
  targetPerWorker: number;
  /** Sequences each worker runs at once (the workers' PPSD_MAX_BATCH). */
  maxBatch: number;
  intervalMs: number;
  wakeFromZero: boolean;
  prefix: string;
}

/**
 * PPSD_REDIS_URL, PPSD_ASG_NAME, AWS_REGION (required); PPSD_MODELS (comma list of model ids) or
 * PPSD_QUEUES (comma list of queue names); PPSD_TARGET_BACKLOG_PER_WORKER (jobs per worker batch slot,
 * default 1), PPSD_MAX_BATCH (sequences per worker, as the workers are configured; default 16),
 * PPSD_PUBLISH_INTERVAL_MS (default 60000), PPSD_METRIC_NAMESPACE (PPSD), PPSD_METRIC_NAME
 * (BacklogPerWorker), PPSD_WAKE_FROM_ZERO (true), PPSD_QUEUE_PREFIX ({ppsd}).
 */
export function publisherConfigFromEnv(env: Env = process.env): PublisherConfig {
  const r = new Reader(env);
  const redisUrl = r.str('PPSD_REDIS_URL', { required: true });
  checkRedisUrl(r, redisUrl);
  const asgName = r.str('PPSD_ASG_NAME', { required: true });
  const region = r.str('AWS_REGION', { required: true });
  let queues = r.list('PPSD_QUEUES');
  if (queues.length === 0) {
    const models = r.list('PPSD_MODELS');
    if (models.length === 0) r.problems.push('set PPSD_MODELS (comma-separated model ids) or PPSD_QUEUES');
    queues = [];
    for (const m of models) {
      try {
        queues.push(queueNameForModel(m));
      } catch (err) {
        r.problems.push(`PPSD_MODELS: ${(err as Error).message}`);
      }
    }
  }
  const config: PublisherConfig = {
    redisUrl,
    queues,
    asgName,
    region,
    namespace: r.str('PPSD_METRIC_NAMESPACE', { fallback: DEFAULT_NAMESPACE }) ?? DEFAULT_NAMESPACE,
    metricName: r.str('PPSD_METRIC_NAME', { fallback: DEFAULT_METRIC_NAME }) ?? DEFAULT_METRIC_NAME,
    targetPerWorker: r.num('PPSD_TARGET_BACKLOG_PER_WORKER', 1, { min: 0.01 }),
    maxBatch: r.num('PPSD_MAX_BATCH', DEFAULT_MAX_BATCH, { min: 1, integer: true }),
    intervalMs: r.num('PPSD_PUBLISH_INTERVAL_MS', 60_000, { min: 1000, integer: true }),
    wakeFromZero: r.bool('PPSD_WAKE_FROM_ZERO', true),
    prefix: r.str('PPSD_QUEUE_PREFIX', { fallback: QUEUE_PREFIX }) ?? QUEUE_PREFIX,
  };
  r.done();
  return config;
}

export interface DrainConfig {
  asgName: string;
  hookName: string;
  /** Region, or undefined to read it from IMDS. */
  region: string | undefined;
  stopSpec: string;
  drainTimeoutSeconds: number;
  pollIntervalMs: number;
  heartbeatIntervalMs: number;
  imdsEndpoint: string | undefined;
  dockerSocket: string;
}

/**
 * PPSD_ASG_NAME, PPSD_LIFECYCLE_HOOK_NAME (required); PPSD_DRAIN_STOP (`systemd:<unit>` |
 * `docker:<container>`, default systemd:ppsd-worker.service), PPSD_DRAIN_TIMEOUT_SECONDS (870),
 * PPSD_DRAIN_POLL_MS (5000), PPSD_DRAIN_HEARTBEAT_MS (60000), AWS_REGION (else from IMDS),
 * PPSD_IMDS_ENDPOINT, PPSD_DOCKER_SOCKET (/var/run/docker.sock).
 */
export function drainConfigFromEnv(env: Env = process.env): DrainConfig {
  const r = new Reader(env);
  const stopSpec = r.str('PPSD_DRAIN_STOP', { fallback: 'systemd:ppsd-worker.service' }) ?? '';
  if (!/^(systemd|docker):[A-Za-z0-9@._:-]+$/.test(stopSpec)) {
    r.problems.push(`PPSD_DRAIN_STOP must be "systemd:<unit>" or "docker:<container>", got "${stopSpec}"`);
  }
  const config: DrainConfig = {
    asgName: r.str('PPSD_ASG_NAME', { required: true }),
    hookName: r.str('PPSD_LIFECYCLE_HOOK_NAME', { required: true }),
    region: r.str('AWS_REGION'),
    stopSpec,
    drainTimeoutSeconds: r.num('PPSD_DRAIN_TIMEOUT_SECONDS', 870, { min: 1, integer: true }),
    pollIntervalMs: r.num('PPSD_DRAIN_POLL_MS', 5_000, { min: 100, integer: true }),
    heartbeatIntervalMs: r.num('PPSD_DRAIN_HEARTBEAT_MS', 60_000, { min: 1000, integer: true }),
    imdsEndpoint: r.str('PPSD_IMDS_ENDPOINT'),
    dockerSocket: r.str('PPSD_DOCKER_SOCKET', { fallback: '/var/run/docker.sock' }) ?? '/var/run/docker.sock',
  };
  r.done();
  return config;
}
