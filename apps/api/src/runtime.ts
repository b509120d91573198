/**
 * Production wiring shared by the Node server and the Lambda handler: Redis connections (the command
 * connection fails fast so a dead Redis answers 503 quickly; the subscriber waits and resubscribes),
 * one BullMQ queue per model, the model registry, a Prometheus registry, the app, bootstrap keys.
 */
import { QUEUE_PREFIX, queueName } from '@ppsd/contract';
import { createLogger, type Logger, lineLogger } from '@ppsd/contract/log';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { createApp, type PpsdApp } from './app';
import { bootstrapKeys } from './bootstrap';
import type { ApiConfig } from './config';
import { loadModelRegistry, type ModelRegistry } from './models';
import { createTokenCountPool } from './tokens/pool';

export interface Runtime {
  app: PpsdApp;
  redis: Redis;
  subscriber: Redis;
  close(): Promise<void>;
}

export interface RuntimeOptions {
  models?: ModelRegistry;
  /** The service logger (default: createLogger({service: 'api'})). */
  log?: Logger;
  /** Collect Node process metrics (default true). */
  processMetrics?: boolean;
}

/** Options for request-path connections: fail fast instead of queueing commands while disconnected. */
export const FAIL_FAST = {
  maxRetriesPerRequest: 1,
  enableOfflineQueue: false,
  connectTimeout: 5_000,
} as const;

export async function createRuntime(config: ApiConfig, opts: RuntimeOptions = {}): Promise<Runtime> {
  const logger = opts.log ?? createLogger({ service: 'api' });
  const log = lineLogger(logger);
  const pool = opts.models ? undefined : createTokenCountPool(config.tokenizerThreads);
  const models =
    opts.models ??
    (await loadModelRegistry(config, { fetchPackage: (m) => pullPromptFiles(m.s3!, config, log), pool }));

  let lastError = '';
  // Auto-pipelining: the event reads of many open streams in one tick go to Redis as one write.
  const redis = new Redis(config.redisUrl, { ...FAIL_FAST, lazyConnect: true, enableAutoPipelining: true });
  redis.on('error', (err: Error) => {
    if (err.message !== lastError) logger.warn(`redis: ${err.message}`);
    lastError = err.message;
  });
  redis.on('ready', () => {
    lastError = '';
  });
  const subscriber = new Redis(config.redisUrl, { maxRetriesPerRequest: null, lazyConnect: true });
  subscriber.on('error', () => {}); // reconnects and resubscribes by itself; the command connection logs
  await Promise.all([
    redis.connect().catch((err: Error) => logger.warn(`redis not reachable yet (${err.message}); retrying`)),
    subscriber.connect().catch(() => undefined),
  ]);

  const queues = new Map<string, Queue>();
  const queueFor = (model: string): Queue => {
    let q = queues.get(model);
    if (!q) {
      q = new Queue(queueName(model), { connection: redis, prefix: QUEUE_PREFIX });
      q.on('error', (err: Error) => logger.warn(`queue ${model}: ${err.message}`));
      queues.set(model, q);
    }
    return q;
  };

  const metrics = new Registry();
  if (opts.processMetrics !== false) collectDefaultMetrics({ register: metrics });
  const app = createApp({ redis, subscriber, queues: queueFor, models, config, metrics, log: logger });

  // Bootstrap needs Redis; keep trying in the background if it is not up yet.
  const boot = async (attempt = 0): Promise<void> => {
    try {
      await bootstrapKeys(app.ctx.tenants, config.bootstrapKeys, log, {
        store: app.ctx.adminKeys,
        keys: config.adminKeys,
      });
    } catch (err) {
      if (attempt === 0) logger.warn(`bootstrap deferred: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** attempt)).unref());
      return boot(attempt + 1);
    }
  };
  await Promise.race([boot(), new Promise((r) => setTimeout(r, config.redisTimeoutMs).unref())]);

  return {
    app,
    redis,
    subscriber,
    async close() {
      app.dispose();
      await Promise.allSettled([...queues.values()].map((q) => q.close()));
      await Promise.allSettled([redis.quit(), subscriber.quit(), pool?.close()]);
    },
  };
}

/**
 * The API counts prompt tokens, so for a model kept in S3 it pulls the package's manifest and tokenizer
 * only (each checksummed against the manifest), through the same package cache the workers use.
 */
export async function pullPromptFiles(
  url: string,
  config: ApiConfig,
  log: (m: string) => void,
): Promise<string> {
  const { makeS3Client, parseS3Url } = await import('@ppsd/model-store/s3');
  const { pullPackage } = await import('@ppsd/model-store/package-cache');
  const pulled = await pullPackage(makeS3Client({ endpoint: config.s3Endpoint }), parseS3Url(url), {
    cacheDir: config.cacheDir,
    only: (manifest) => [manifest.tokenizer.file],
    log,
  });
  return pulled.dir;
}
