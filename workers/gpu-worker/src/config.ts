/**
 * Worker configuration from the environment, validated once at start-up. Every problem is reported
 * together, naming the variable, so a misconfigured instance fails fast with one readable message.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { DECODER_NAMES, DEFAULT_MAX_BATCH, type DecoderName } from '@ppsd/contract';

export interface WorkerConfig {
  redisUrl: string;
  /** Model id: the BullMQ queue is queueName(model). */
  model: string;
  /** Where the package comes from: S3 (bucket + prefix) or, for development, a local folder. */
  s3: { bucket: string; prefix: string; endpoint?: string; region: string } | null;
  /** PPSD_PACKAGE_DIR: serve a local package folder instead of pulling one (still verified). */
  packageDir: string | null;
  cacheDir: string;
  /** Device plan, one pipeline stage per entry; 'auto' is resolved at start (see resolveDevices). */
  devices: string[] | 'auto';
  /** PPSD_ALLOW_CPU_FALLBACK: run a stage whose GPU provider is unavailable on CPU (logged) instead of failing. */
  allowCpuFallback: boolean;
  decoder: DecoderName;
  /**
   * PPSD_MAX_BATCH: most sequences the engine runs in one batched step, and the BullMQ jobs this worker
   * holds at once (its `concurrency`).
   */
  maxBatch: number;
  /** PPSD_KV_MEMORY: bytes the engine's KV pool may hold; undefined = the engine's default. */
  kvMemoryBytes?: number;
  /**
   * PPSD_ENGINE_THREAD (default true): the engine runs in its own thread, so its steps never block the
   * event loop that publishes tokens and renews locks; false runs it on the main thread (debugging).
   */
  engineThread: boolean;
  asgName: string | null;
  workerId: string;
  /** BullMQ lock/stall settings (ms): short values let tests see stalled-job recovery within seconds. */
  lockDurationMs: number;
  stalledIntervalMs: number;
  maxStalledCount: number;
  heartbeatMs: number;
  maxSeqLen?: number;
  /** Longest a drain waits for in-flight jobs before handing them back (ms). */
  drainTimeoutMs: number;
  /** Accepted but deprecated settings, to log at start. */
  warnings: string[];
}

const BYTE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  ki: 2 ** 10,
  kib: 2 ** 10,
  mi: 2 ** 20,
  mib: 2 ** 20,
  gi: 2 ** 30,
  gib: 2 ** 30,
  ti: 2 ** 40,
  tib: 2 ** 40,
};

/**
 * A byte size: a plain number of bytes or a number with a unit, `512MiB`, `2GiB`, `1.5 GB`, `8Gi`
 * (KiB/MiB/GiB/TiB and Ki/Mi/Gi/Ti are powers of 1024, kB/MB/GB/TB and K/M/G/T powers of 1000; case
 * does not matter). Returns whole bytes, or undefined when `raw` is not a positive size.
 */
export function parseByteSize(raw: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(raw.trim());
  if (!m) return undefined;
  const unit = BYTE_UNITS[m[2].toLowerCase()];
  if (unit === undefined) return undefined;
  const bytes = Math.floor(Number(m[1]) * unit);
  return Number.isSafeInteger(bytes) && bytes >= 1 ? bytes : undefined;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Record<string, string | undefined>;

export function loadConfig(env: Env = process.env): WorkerConfig {
  const problems: string[] = [];
  const str = (name: string, fallback?: string): string => {
    const v = env[name]?.trim();
    if (v) return v;
    if (fallback === undefined) problems.push(`${name} is required`);
    return fallback ?? '';
  };
  const int = (name: string, fallback: number, min = 1): number => {
    const raw = env[name]?.trim();
    if (!raw) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min) {
      problems.push(`${name} must be an integer >= ${min}, got '${raw}'`);
      return fallback;
    }
    return n;
  };
  /** A yes/no setting: 1/true/yes or 0/false/no; anything else is a problem, not a guess. */
  const bool = (name: string, fallback: boolean): boolean => {
    const raw = env[name]?.trim().toLowerCase();
    if (!raw) return fallback;
    if (['1', 'true', 'yes'].includes(raw)) return true;
    if (['0', 'false', 'no'].includes(raw)) return false;
    problems.push(`${name} must be true or false (1/0, yes/no), got '${env[name]}'`);
    return fallback;
  };

  const redisUrl = str('PPSD_REDIS_URL', 'redis://127.0.0.1:6379');
  if (redisUrl && !/^rediss?:\/\//.test(redisUrl))
    problems.push(`PPSD_REDIS_URL must be redis:// or rediss://, got '${redisUrl}'`);
  const model = str('PPSD_MODEL', 'stories260K');
  if (model && !/^[A-Za-z0-9._-]+$/.test(model))
    problems.push(`PPSD_MODEL must match [A-Za-z0-9._-]+, got '${model}'`);

  const packageDir = env.PPSD_PACKAGE_DIR?.trim() || null;
  const bucket = env.PPSD_S3_BUCKET?.trim();
  let s3: WorkerConfig['s3'] = null;
  if (bucket) {
    const endpoint = env.PPSD_S3_ENDPOINT?.trim() || undefined;
    if (endpoint && !/^https?:\/\//.test(endpoint))
      problems.push(`PPSD_S3_ENDPOINT must be an http(s) URL, got '${endpoint}'`);
    s3 = {
      bucket,
      prefix: (env.PPSD_S3_PREFIX ?? model).replace(/^\/+|\/+$/g, ''),
      endpoint,
      region: env.AWS_REGION?.trim() || env.AWS_DEFAULT_REGION?.trim() || 'us-east-1',
    };
  } else if (!packageDir) {
    problems.push('PPSD_S3_BUCKET is required (or PPSD_PACKAGE_DIR for a local package folder)');
  }

  const devicesRaw = str('PPSD_DEVICES', 'cpu');
  let devices: WorkerConfig['devices'] = 'auto';
  if (devicesRaw !== 'auto') {
    devices = devicesRaw.split(',').map((d) => d.trim());
    for (const d of devices) {
      if (!/^(cpu|webgpu|cuda(:\d+)?)$/.test(d))
        problems.push(`PPSD_DEVICES entry '${d}' is not cpu, cuda:N or webgpu`);
    }
  }

  const decoderRaw = str('PPSD_DECODER', 'ar');
  if (!DECODER_NAMES.includes(decoderRaw as DecoderName)) {
    problems.push(`PPSD_DECODER must be one of ${DECODER_NAMES.join(', ')}, got '${decoderRaw}'`);
  }

  // PPSD_CONCURRENCY (BullMQ jobs in flight) is what PPSD_MAX_BATCH sets now: read as a deprecated alias.
  const warnings: string[] = [];
  let maxBatch = int('PPSD_MAX_BATCH', DEFAULT_MAX_BATCH);
  if (env.PPSD_CONCURRENCY?.trim()) {
    if (env.PPSD_MAX_BATCH?.trim()) {
      warnings.push('PPSD_CONCURRENCY is deprecated and ignored: PPSD_MAX_BATCH sets the jobs in flight');
    } else {
      maxBatch = int('PPSD_CONCURRENCY', DEFAULT_MAX_BATCH);
      warnings.push(`PPSD_CONCURRENCY is deprecated: read as PPSD_MAX_BATCH=${maxBatch}`);
    }
  }
  const kvRaw = env.PPSD_KV_MEMORY?.trim();
  const kvMemoryBytes = kvRaw ? parseByteSize(kvRaw) : undefined;
  if (kvRaw && kvMemoryBytes === undefined)
    problems.push(
      `PPSD_KV_MEMORY must be a positive size in bytes, e.g. 536870912, 512MiB, 2GiB or 2GB, got '${kvRaw}'`,
    );

  const maxSeqRaw = env.PPSD_MAX_SEQ_LEN?.trim();
  const cfg: WorkerConfig = {
    redisUrl,
    model,
    s3,
    packageDir,
    cacheDir: str('PPSD_CACHE_DIR', join(process.cwd(), '.data', 'cache')),
    devices,
    allowCpuFallback: ['1', 'true', 'yes'].includes(str('PPSD_ALLOW_CPU_FALLBACK', 'false').toLowerCase()),
    decoder: decoderRaw as DecoderName,
    maxBatch,
    ...(kvMemoryBytes !== undefined ? { kvMemoryBytes } : {}),
    engineThread: bool('PPSD_ENGINE_THREAD', true),
    asgName: env.PPSD_ASG_NAME?.trim() || null,
    workerId: str('PPSD_WORKER_ID', `${hostname()}-${process.pid}`),
    // A killed worker's job comes back within lock + stall interval (about 10 s): the lock is renewed
    // every lockDuration / 2 by the worker's event loop, which never blocks that long (inference runs in
    // onnxruntime's threads).
    lockDurationMs: int('PPSD_LOCK_DURATION_MS', 8_000, 100),
    stalledIntervalMs: int('PPSD_STALLED_INTERVAL_MS', 2_000, 100),
    maxStalledCount: int('PPSD_MAX_STALLED_COUNT', 2, 0),
    heartbeatMs: int('PPSD_HEARTBEAT_MS', 1_000, 100),
    maxSeqLen: maxSeqRaw ? int('PPSD_MAX_SEQ_LEN', 0) : undefined,
    drainTimeoutMs: int('PPSD_DRAIN_TIMEOUT_MS', 10 * 60_000, 0),
    warnings,
  };
  if (problems.length) throw new ConfigError(`invalid worker configuration:\n  - ${problems.join('\n  - ')}`);
  return cfg;
}
