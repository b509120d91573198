/**
 * GPU worker entry: `node --import tsx workers/gpu-worker/src/main.ts` (configuration: ./config.ts).
 *
 * Start-up: heartbeat (not ready) -> pull + verify the model package from S3 (or a local folder) ->
 * open the engine -> one-token warm-up -> heartbeat ready -> consume the model's BullMQ queue.
 * SIGTERM/SIGINT drain (./drain.ts). Exit codes: 0 drained, 1 start-up failure, 2 bad configuration.
 * Logs: JSON lines on stdout (@ppsd/contract/log, PPSD_LOG_LEVEL), workerId on every line; a job's lines
 * also carry jobId, tenant and attempt (./job-runner.ts).
 */
import { DECODER_NAMES, type GenerationJob, type JobResult, QUEUE_PREFIX, queueName } from '@ppsd/contract';
import { createLogger, type Logger, lineLogger } from '@ppsd/contract/log';
import { resolveDevicePlan, verifyPackage } from '@ppsd/engine';
import { pullPackage } from '@ppsd/model-store/package-cache';
import { verifyPackageFiles } from '@ppsd/model-store/publish';
import { makeS3Client } from '@ppsd/model-store/s3';
import { type Job, Worker } from 'bullmq';
import { Redis, type RedisOptions } from 'ioredis';
import { CancelRegistry } from './cancel';
import { ConfigError, loadConfig, type WorkerConfig } from './config';
import { createDrain, installSignalHandlers } from './drain';
import { DecoderSupport, openEngine } from './engine';
import type { WorkerEngine } from './engine-types';
import { Heartbeat } from './heartbeat';
import { attemptOf, createProcessor, failUnrun } from './job-runner';
import { createProtection } from './protection';

export const redisOptions: RedisOptions = {
  maxRetriesPerRequest: null, // BullMQ requirement: commands wait for a reconnect instead of failing
  enableReadyCheck: true,
  retryStrategy: (times) => Math.min(100 * times, 1000),
};

/** The worker's logger: `service: 'worker'`, then `workerId` once the configuration is read. */
let logger: Logger = createLogger({ service: 'worker' });

async function main(): Promise<void> {
  // The AWS SDK warns once that its 2027 releases need Node 22: noise in a worker's log.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  let cfg: WorkerConfig;
  try {
    cfg = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      logger.fatal(err.message);
      process.exit(2);
    }
    throw err;
  }
  logger = logger.child({ workerId: cfg.workerId });
  const log = lineLogger(logger);
  for (const w of cfg.warnings) logger.warn(w);
  // The device plan is checked before anything else: a missing GPU provider, driver or library fails
  // here with what to install (or becomes CPU when PPSD_ALLOW_CPU_FALLBACK allows it, logged).
  let devices: string[];
  try {
    const plan = resolveDevicePlan(cfg.devices === 'auto' ? 'auto' : cfg.devices.join(','), {
      allowCpuFallback: cfg.allowCpuFallback,
      log,
    });
    devices = plan.devices;
    log(`device plan: ${devices.join(',')} (${plan.reason})`);
  } catch (err) {
    logger.fatal(`device plan: ${(err as Error).message}`);
    process.exit(2);
  }
  // Auto-pipelining: the token events every running job publishes in one step (one script call each)
  // leave in one write to Redis instead of one round trip per job.
  const redis = new Redis(cfg.redisUrl, { ...redisOptions, enableAutoPipelining: true });
  let redisDown = false;
  redis.on('error', (err: Error) => {
    if (!redisDown) logger.warn(`redis: ${err.message} (reconnecting)`);
    redisDown = true;
  });
  redis.on('ready', () => {
    if (redisDown) log('redis: reconnected');
    redisDown = false;
  });

  const heartbeat = new Heartbeat(
    redis,
    { workerId: cfg.workerId, modelId: cfg.model, decoders: [], devices },
    cfg.heartbeatMs,
    log,
  );
  heartbeat.start();
  const cancels = new CancelRegistry(redis, log);
  const protection = await createProtection(cfg.asgName, logger);

  let enginePromise: Promise<WorkerEngine> | null = null;
  let worker: Worker<GenerationJob, JobResult> | null = null;
  const drain = createDrain({
    log,
    timeoutMs: cfg.drainTimeoutMs,
    markNotReady: () => heartbeat.update({ ready: false }),
    stopTakingJobs: async () => {
      await worker?.close();
    },
    abortInFlight: (why) => cancels.abortAll(why),
    releaseEngine: async () => {
      // An engine still opening is waited for, then closed: never exit while sessions are being created.
      const engine = await enginePromise?.catch(() => null);
      await engine?.close();
    },
    closeConnections: async () => {
      await protection.stop();
      await heartbeat.stop();
      await cancels.stop();
      await redis.quit().catch(() => redis.disconnect());
    },
  });
  installSignalHandlers(drain);

  // 1. the package
  let packageDir: string;
  let freshlyVerified = false;
  if (cfg.s3) {
    const client = makeS3Client({ endpoint: cfg.s3.endpoint, region: cfg.s3.region });
    try {
      const pulled = await pullPackage(client, cfg.s3, {
        cacheDir: cfg.cacheDir,
        log,
        verify: verifyPackage,
      });
      packageDir = pulled.dir;
      freshlyVerified = !pulled.fromCache; // a cached copy is re-hashed by the engine at open
    } finally {
      client.destroy();
    }
  } else {
    packageDir = cfg.packageDir!;
    await verifyPackageFiles(packageDir);
    freshlyVerified = true;
    log(`package ${packageDir} verified`);
  }
  if (drain.draining) return;

  // 2. the engine, 3. the warm-up
  const opening = openEngine(packageDir, {
    decoder: cfg.decoder,
    devices,
    maxSeqLen: cfg.maxSeqLen,
    maxBatch: cfg.maxBatch,
    kvMemoryBytes: cfg.kvMemoryBytes,
    allowCpuFallback: cfg.allowCpuFallback,
    verified: freshlyVerified,
    awaitTokens: (Number(process.env.PPSD_FAULT_TOKEN_DELAY_MS ?? 0) || 0) > 0,
    thread: cfg.engineThread,
    log,
  });
  enginePromise = opening;
  const opened = await opening;
  const kvPool = cfg.kvMemoryBytes ? `${cfg.kvMemoryBytes} bytes` : "the engine's default";
  log(`engine open on ${devices.join(',')} (max batch ${cfg.maxBatch}, KV pool ${kvPool})`);
  void heartbeat.trackScheduler(() => opened.schedulerStats());
  const support = new DecoderSupport(
    opened,
    cfg.decoder,
    log,
    (decoders) => void heartbeat.update({ decoders }),
  );
  await support.warmUpDefault();
  if (drain.draining) return;

  // 4. the queue
  await cancels.start(cfg.redisUrl, redisOptions);
  const processor = createProcessor({
    redis,
    engine: opened,
    workerId: cfg.workerId,
    model: cfg.model,
    defaultDecoder: cfg.decoder,
    decoders: DECODER_NAMES,
    ensureDecoder: (d, jobLog) => support.ensure(d, jobLog),
    stages: devices.length,
    maxStages: opened.maxStages,
    cancels,
    log: logger,
    handBack: () => drain.handingBack,
    jobTimeoutMs: Number(process.env.PPSD_JOB_TIMEOUT_MS ?? 0) || 0,
    tokenDelayMs: Number(process.env.PPSD_FAULT_TOKEN_DELAY_MS ?? 0) || 0,
    onBusy: (delta) => {
      heartbeat.addBusy(delta);
      if (delta > 0) protection.jobStarted();
      else protection.jobFinished();
    },
  });
  worker = new Worker<GenerationJob, JobResult>(queueName(cfg.model), processor, {
    connection: new Redis(cfg.redisUrl, redisOptions),
    prefix: QUEUE_PREFIX,
    // up to maxBatch jobs at once: the engine batches the admitted ones, the rest wait inside it (their
    // locks are renewed like any active job's, and their time limit starts only when admitted)
    concurrency: cfg.maxBatch,
    lockDuration: cfg.lockDurationMs,
    stalledInterval: cfg.stalledIntervalMs,
    maxStalledCount: cfg.maxStalledCount,
    autorun: true,
  });
  worker.on('error', (err) => {
    if (!redisDown) logger.warn(`queue: ${err.message}`);
  });
  worker.on('failed', (job: Job<GenerationJob> | undefined, err: Error) => {
    if (job && /stalled more than allowable limit|started more than allowable limit/.test(err.message)) {
      const jobLog = logger.child({ jobId: job.id, tenant: job.data.tenant, attempt: attemptOf(job) });
      jobLog.warn(`job ${job.id}: ${err.message}; ending its stream`);
      failUnrun(redis, job, `worker lost: ${err.message}`, cfg.model).catch((e: Error) =>
        jobLog.error(`job ${job.id}: ${e.message}`),
      );
    }
  });
  await worker.waitUntilReady();
  await heartbeat.update({ ready: true, decoders: support.available, maxStages: opened.maxStages });
  log(`ready: queue ${queueName(cfg.model)}, default decoder ${cfg.decoder}, max batch ${cfg.maxBatch}`);
}

main().catch((err: unknown) => {
  const message = `start-up failed: ${err instanceof Error ? err.message : String(err)}`;
  // the stack only with PPSD_DEBUG: a refused package is an operator's problem, not a code path
  logger.fatal(process.env.PPSD_DEBUG && err instanceof Error ? { err } : {}, message);
  process.exit(1);
});
