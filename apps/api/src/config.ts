/**
 * API configuration from environment variables, validated once at start. Every problem is reported at
 * once, naming the variable, what it must be and what it was (ConfigError).
 */
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { keyWeakness } from '@ppsd/contract';

export interface ModelSource {
  id: string;
  /** Local model package directory (manifest.json + tokenizer), when given as `id=dir`. */
  dir?: string;
  /** Package location in S3, when given as `id=s3://bucket/prefix`: manifest + tokenizer are pulled. */
  s3?: string;
}

export interface BootstrapKey {
  tenant: string;
  key: string;
}

export interface ApiConfig {
  redisUrl: string;
  host: string;
  port: number;
  models: ModelSource[];
  /** Directory holding one package folder per model id (used for models given without `=dir`). */
  modelDir: string;
  /** S3-compatible endpoint for `id=s3://...` models (unset: AWS S3). */
  s3Endpoint?: string;
  /** Where manifest + tokenizer pulled from S3 are cached. */
  cacheDir: string;
  bootstrapKeys: BootstrapKey[];
  /** PPSD_ADMIN_KEYS: keys of the admin API (/admin/), registered at start. */
  adminKeys: string[];
  /** PPSD_KEY_SECRET: the HMAC key every stored API key hash is made with. */
  keySecret: string;
  /** 0 = only the model's context limits the prompt. */
  maxPromptTokens: number;
  /** max_tokens when a chat/summarize request gives none (capped by the context left). */
  defaultMaxTokens: number;
  /** Admitted, unfinished jobs per tenant (0 = unlimited). */
  tenantMaxJobs: number;
  /** Tokens (prompt + max_tokens reserved, actual charged) per tenant per period (0 = unlimited). */
  tenantTokenQuota: number;
  quotaPeriodSeconds: number;
  /** Waiting jobs in one model's queue above which admission answers 503 overloaded (0 = unlimited). */
  queueMaxWaiting: number;
  jobAttempts: number;
  retryAfterSeconds: number;
  /** How long job metadata and Idempotency-Key mappings are kept. */
  jobTtlSeconds: number;
  /** Safety-net re-read interval of a followed job stream (pub/sub wakes it earlier). */
  pollMs: number;
  /** SSE comment sent on an idle stream so proxies keep it open. */
  keepAliveMs: number;
  /** Upper bound of any single Redis/BullMQ call on the request path. */
  redisTimeoutMs: number;
  /** Seconds a draining server waits for open requests on SIGTERM. */
  shutdownGraceSeconds: number;
  /** Largest request body accepted (bytes); larger ones answer 413 before any of it is parsed. */
  maxBodyBytes: number;
  /** Worker threads that count prompt tokens (the event loop never tokenizes). */
  tokenizerThreads: number;
}

/** 4 MiB: a 128k-token document with room for JSON escaping. */
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

export function loadConfig(env: Env = process.env): ApiConfig {
  const problems: string[] = [];
  const str = (name: string) => {
    const v = env[name]?.trim();
    return v === '' ? undefined : v;
  };
  const int = (name: string, def: number, min = 0, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = str(name);
    if (raw === undefined) return def;
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
      problems.push(`${name} must be an integer between ${min} and ${max}, got '${raw}'`);
      return def;
    }
    return Number(raw);
  };

  const redisUrl = str('PPSD_REDIS_URL') ?? 'redis://127.0.0.1:6379';
  try {
    const u = new URL(redisUrl);
    if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new Error('protocol');
  } catch {
    problems.push(`PPSD_REDIS_URL must be a redis:// or rediss:// URL, got '${redisUrl}'`);
  }

  const models: ModelSource[] = [];
  const modelsRaw = str('PPSD_MODELS') ?? str('PPSD_MODEL');
  if (!modelsRaw) {
    problems.push(
      "PPSD_MODELS is required: comma-separated model ids, each optionally 'id=/path/to/package' (e.g. 'stories260K')",
    );
  } else {
    for (const part of modelsRaw.split(',').map((p) => p.trim())) {
      if (!part) continue;
      const eq = part.indexOf('=');
      const id = (eq < 0 ? part : part.slice(0, eq)).trim();
      const dir = eq < 0 ? undefined : part.slice(eq + 1).trim();
      if (!/^[A-Za-z0-9._-]+$/.test(id)) {
        problems.push(`PPSD_MODELS: model id '${id}' may only contain letters, digits, '.', '_' and '-'`);
      } else if (eq >= 0 && !dir) {
        problems.push(`PPSD_MODELS: model '${id}' has an empty package directory after '='`);
      } else if (models.some((m) => m.id === id)) {
        problems.push(`PPSD_MODELS: model '${id}' is listed twice`);
      } else models.push(dir?.startsWith('s3://') ? { id, s3: dir } : { id, dir });
    }
  }

  // Keys are never echoed in a message: only their position and what is wrong with them.
  const bootstrapKeys: BootstrapKey[] = [];
  const bootstrapParts = (str('PPSD_BOOTSTRAP_KEYS') ?? '').split(',').map((p) => p.trim());
  bootstrapParts.forEach((part, i) => {
    if (!part) return;
    const colon = part.indexOf(':');
    const tenant = part.slice(0, colon).trim();
    const key = part.slice(colon + 1).trim();
    const weak = colon < 0 ? undefined : keyWeakness(key);
    if (colon < 0 || !/^[A-Za-z0-9._-]{1,64}$/.test(tenant)) {
      problems.push(
        `PPSD_BOOTSTRAP_KEYS entries are 'tenant:key' (tenant letters/digits/._-); entry ${i + 1} is not`,
      );
    } else if (weak) {
      problems.push(`PPSD_BOOTSTRAP_KEYS: the key of tenant '${tenant}' (entry ${i + 1}) ${weak}`);
    } else bootstrapKeys.push({ tenant, key });
  });
  const adminKeys: string[] = [];
  (str('PPSD_ADMIN_KEYS') ?? '').split(',').forEach((raw, i) => {
    const key = raw.trim();
    if (!key) return;
    const weak = keyWeakness(key);
    if (weak) problems.push(`PPSD_ADMIN_KEYS: admin key ${i + 1} ${weak}`);
    else adminKeys.push(key);
  });
  const keySecret = str('PPSD_KEY_SECRET') ?? '';
  if (!keySecret) {
    problems.push(
      'PPSD_KEY_SECRET is required: the server secret API keys are hashed with (HMAC-SHA256), at least 32 random characters, e.g. `openssl rand -base64 32`',
    );
  } else {
    const weak = keyWeakness(keySecret);
    if (weak) problems.push(`PPSD_KEY_SECRET ${weak}`);
  }

  const cfg: ApiConfig = {
    redisUrl,
    host: str('HOST') ?? '0.0.0.0',
    port: int('PORT', 8080, 0, 65535),
    models,
    modelDir: str('PPSD_MODEL_DIR') ?? '.data/models',
    s3Endpoint: str('PPSD_S3_ENDPOINT'),
    cacheDir: str('PPSD_CACHE_DIR') ?? join(tmpdir(), 'ppsd-api-cache'),
    bootstrapKeys,
    adminKeys,
    keySecret,
    maxPromptTokens: int('PPSD_MAX_PROMPT_TOKENS', 0),
    defaultMaxTokens: int('PPSD_DEFAULT_MAX_TOKENS', 256, 1),
    tenantMaxJobs: int('PPSD_TENANT_MAX_JOBS', 64),
    tenantTokenQuota: int('PPSD_TENANT_TOKEN_QUOTA', 0),
    quotaPeriodSeconds: int('PPSD_QUOTA_PERIOD_SECONDS', 86_400, 1),
    queueMaxWaiting: int('PPSD_QUEUE_MAX_WAITING', 0),
    jobAttempts: int('PPSD_JOB_ATTEMPTS', 3, 1, 100),
    retryAfterSeconds: int('PPSD_RETRY_AFTER_SECONDS', 2, 1),
    jobTtlSeconds: int('PPSD_JOB_TTL_SECONDS', 86_400, 60),
    pollMs: int('PPSD_STREAM_POLL_MS', 2_000, 10),
    keepAliveMs: int('PPSD_SSE_KEEPALIVE_MS', 15_000, 100),
    redisTimeoutMs: int('PPSD_REDIS_TIMEOUT_MS', 3_000, 10),
    shutdownGraceSeconds: int('PPSD_SHUTDOWN_GRACE_SECONDS', 25, 0),
    maxBodyBytes: int('PPSD_MAX_BODY_BYTES', DEFAULT_MAX_BODY_BYTES, 1024),
    tokenizerThreads: int('PPSD_TOKENIZER_THREADS', 1, 1, 64),
  };
  if (problems.length) throw new ConfigError(problems);
  return cfg;
}

/**
 * Defaults for tests and embedding: everything `loadConfig` would pick, with overrides; the key secret
 * is random (per call) unless given.
 */
export function defaultConfig(over: Partial<ApiConfig> = {}): ApiConfig {
  const secret = randomBytes(32).toString('base64url');
  return { ...loadConfig({ PPSD_MODELS: 'default', PPSD_KEY_SECRET: secret }), models: [], ...over };
}
