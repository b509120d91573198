/**
 * The service stack for end-to-end and fault tests, all real and all on 127.0.0.1: redis-server (AOF),
 * s3rver seeded with the stories260K package, the API (apps/api/src/server.ts) and GPU workers as child
 * processes. Children are killed on stop() and, as a last resort, when the test process exits.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  decodeEvent,
  decodeUsage,
  type GenerationJob,
  isTerminal,
  keys,
  QUEUE_PREFIX,
  queueName,
  type StreamEvent,
  type UsageRecord,
  type WorkerHeartbeat,
} from '@ppsd/contract';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { ensureStoriesPackage, publishIfChanged, REPO_ROOT } from '../../infra/local/seed';
import { TEST_KEY_SECRET, testKey } from './keys';
import { logLines } from './logs';
import { type RedisServer, startRedis } from './redis-server';
import { startS3, type TestS3 } from './s3-server';

export const MODEL = 'stories260K';
export const BUCKET = 'ppsd-models';
export const ROOT = REPO_ROOT;

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      srv.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Thrown inside a waitFor condition to stop waiting at once (a process it waits on has exited). */
export class Fatal extends Error {}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as T;
    } catch (err) {
      if (err instanceof Fatal) throw err;
      lastErr = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ''}`);
    await sleep(everyMs);
  }
}

/** A child process with its combined output kept for assertions and failure messages. */
export class Proc {
  output = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    live.add(child);
    const keep = (d: Buffer) => {
      this.output += d.toString();
      if (this.output.length > 400_000) this.output = this.output.slice(-200_000);
      if (process.env.PPSD_TEST_VERBOSE) process.stderr.write(`[${name}] ${d}`);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((res) =>
      child.once('exit', (code, signal) => {
        live.delete(child);
        res({ code, signal });
      }),
    );
  }
  /** The JSON log lines (@ppsd/contract/log) of the output so far. */
  logs() {
    return logLines(this.output);
  }
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  /** Sends `signal`; SIGKILL after `graceMs` if it has not exited. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000) {
    if (!this.running) return this.exited;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const r = await this.exited;
    clearTimeout(timer);
    return r;
  }
}

export function spawnTs(name: string, entry: string, env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', resolve(ROOT, entry)], {
    cwd: ROOT,
    env: { ...process.env, NODE_NO_WARNINGS: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Proc(name, child);
}

/** Imports stories260K into a fresh package folder of this test process (fast: 1 MB of weights). */
export async function storiesPackage(): Promise<{ dir: string; cleanup(): Promise<void> }> {
  const base = await mkdtemp(join(tmpdir(), 'ppsd-pkg-'));
  const dir = join(base, MODEL);
  await ensureStoriesPackage(dir);
  return { dir, cleanup: () => rm(base, { recursive: true, force: true }) };
}

export interface WorkerOptions {
  env?: Record<string, string>;
  waitReady?: boolean;
}

export interface Stack {
  redis: RedisServer;
  s3: TestS3;
  packageDir: string;
  cacheDir: string;
  apiUrl: string;
  apiKey: string;
  /** Admin key the API is started with (PPSD_ADMIN_KEYS). */
  adminKey: string;
  tenant: string;
  keys: { tenant: string; key: string }[];
  api: Proc | null;
  workers: Proc[];
  /** A Redis client for assertions (fails fast). */
  client: Redis;
  workerEnv(extra?: Record<string, string>): Record<string, string>;
  startWorker(opts?: WorkerOptions): Promise<Proc>;
  startApi(env?: Record<string, string>): Promise<Proc>;
  readyWorkers(): Promise<WorkerHeartbeat[]>;
  stop(): Promise<void>;
}

export interface StackOptions {
  api?: boolean;
  workers?: number;
  workerEnv?: Record<string, string>;
  apiEnv?: Record<string, string>;
  keys?: { tenant: string; key: string }[];
  /** CONFIG SET on the fresh Redis (e.g. appendfsync everysec for benchmarks; lost on restart()). */
  redisConfig?: Record<string, string>;
}

/** Short lock/stall settings so a killed worker's job is recovered within seconds. */
export const FAST_RECOVERY_ENV = {
  PPSD_LOCK_DURATION_MS: '2000',
  PPSD_STALLED_INTERVAL_MS: '1000',
  PPSD_HEARTBEAT_MS: '500',
};

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const cleanups: (() => Promise<unknown>)[] = [];
  const procs: Proc[] = [];
  try {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const s3 = await startS3();
    cleanups.push(() => s3.stop());
    await s3.createBucket(BUCKET);
    const pkg = await storiesPackage();
    cleanups.push(() => pkg.cleanup());
    await publishIfChanged(s3.client, pkg.dir, { bucket: BUCKET, prefix: MODEL });
    const cacheDir = await mkdtemp(join(tmpdir(), 'ppsd-cache-'));
    cleanups.push(() => rm(cacheDir, { recursive: true, force: true }));
    const client = new Redis(redis.url, {
      maxRetriesPerRequest: 1,
      retryStrategy: (n) => Math.min(n * 100, 500),
    });
    client.on('error', () => {});
    cleanups.push(async () => client.disconnect());
    for (const [k, v] of Object.entries(opts.redisConfig ?? {})) await client.config('SET', k, v);
    const stackKeys = opts.keys ?? [{ tenant: 'acme', key: testKey('acme') }];

    const stack: Stack = {
      redis,
      s3,
      packageDir: pkg.dir,
      cacheDir,
      apiUrl: '',
      apiKey: stackKeys[0].key,
      adminKey: testKey('stackroot', 'admin'),
      tenant: stackKeys[0].tenant,
      keys: stackKeys,
      api: null,
      workers: [],
      client,
      workerEnv: (extra = {}) => ({
        PPSD_REDIS_URL: redis.url,
        PPSD_MODEL: MODEL,
        PPSD_S3_BUCKET: BUCKET,
        PPSD_S3_PREFIX: MODEL,
        PPSD_S3_ENDPOINT: s3.endpoint,
        AWS_REGION: 'us-east-1',
        PPSD_CACHE_DIR: cacheDir,
        PPSD_DEVICES: 'cpu',
        PPSD_DRAIN_TIMEOUT_MS: '20000',
        ...FAST_RECOVERY_ENV,
        ...opts.workerEnv,
        ...extra,
      }),
      async startWorker(wo = {}) {
        const id = `w${stack.workers.length + 1}-${process.pid}`;
        const w = spawnTs(
          `worker ${id}`,
          'workers/gpu-worker/src/main.ts',
          stack.workerEnv({ PPSD_WORKER_ID: id, ...wo.env }),
        );
        procs.push(w);
        stack.workers.push(w);
        if (wo.waitReady !== false) {
          await waitFor(
            `worker ${id} ready`,
            async () => {
              if (!w.running) throw new Fatal(`worker exited:\n${w.output}`);
              return (await stack.readyWorkers()).some((h) => h.workerId === id);
            },
            60_000,
          );
        }
        return w;
      },
      async startApi(env = {}) {
        const port = await freePort();
        const api = spawnTs('api', 'apps/api/src/server.ts', {
          PORT: String(port),
          HOST: '127.0.0.1',
          PPSD_REDIS_URL: redis.url,
          PPSD_MODELS: `${MODEL}=${pkg.dir}`,
          PPSD_BOOTSTRAP_KEYS: stackKeys.map((k) => `${k.tenant}:${k.key}`).join(','),
          PPSD_KEY_SECRET: TEST_KEY_SECRET,
          PPSD_ADMIN_KEYS: stack.adminKey,
          PPSD_STREAM_POLL_MS: '500',
          ...opts.apiEnv,
          ...env,
        });
        procs.push(api);
        stack.api = api;
        stack.apiUrl = `http://127.0.0.1:${port}`;
        await waitFor(
          'API /healthz',
          async () => {
            if (!api.running) throw new Fatal(`API exited:\n${api.output}`);
            const res = await fetch(`${stack.apiUrl}/healthz`).catch(() => null);
            return res?.ok;
          },
          60_000,
        );
        return api;
      },
      async readyWorkers() {
        const all = await client.hgetall(keys.workers(MODEL));
        return Object.values(all)
          .map((v) => JSON.parse(v) as WorkerHeartbeat)
          .filter((h) => h.ready && Date.now() - h.at < 15_000);
      },
      async stop() {
        await Promise.all(procs.map((p) => p.stop('SIGTERM', 8_000)));
        for (const c of cleanups.reverse()) await c().catch(() => {});
      },
    };
    for (let i = 0; i < (opts.workers ?? 1); i++) await stack.startWorker();
    if (opts.api !== false) await stack.startApi();
    return stack;
  } catch (err) {
    await Promise.all(procs.map((p) => p.stop('SIGKILL', 1000)));
    for (const c of cleanups.reverse()) await c().catch(() => {});
    throw err;
  }
}

// ---- driving the worker directly through the queue (what the API does at admission) ----

export interface EnqueueOptions {
  prompt?: string;
  maxTokens?: number;
  temperature?: number;
  seed?: number;
  speculation?: GenerationJob['speculation'];
  tenant?: string;
  attempts?: number;
  promptTokens?: number;
}

export function makeJob(id: string, o: EnqueueOptions = {}): GenerationJob {
  return {
    id,
    tenant: o.tenant ?? 'acme',
    model: MODEL,
    kind: 'completion',
    prompt: o.prompt ?? 'Once upon a time',
    promptTokens: o.promptTokens ?? 5,
    params: {
      maxTokens: o.maxTokens ?? 16,
      temperature: o.temperature ?? 0,
      topP: 1,
      seed: o.seed ?? 7,
      stop: [],
    },
    speculation: o.speculation ?? 'auto',
    reservedTokens: (o.promptTokens ?? 5) + (o.maxTokens ?? 16),
    enqueuedAt: Date.now(),
  };
}

/** Reserves quota and enqueues like the API's admission does. */
export async function enqueue(redisUrl: string, job: GenerationJob, attempts = 3): Promise<void> {
  const conn = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const queue = new Queue<GenerationJob>(queueName(MODEL), { connection: conn, prefix: QUEUE_PREFIX });
  try {
    await conn
      .multi()
      .hincrby(keys.tenantQuota(job.tenant), 'reserved', job.reservedTokens)
      .hset(keys.tenantReservations(job.tenant), job.id, job.reservedTokens)
      .exec();
    await queue.add('generate', job, { jobId: job.id, attempts, backoff: { type: 'fixed', delay: 200 } });
  } finally {
    await queue.close();
    conn.disconnect();
  }
}

export interface ReadEvent {
  id: string;
  event: StreamEvent;
}

export async function readEvents(client: Redis, jobId: string): Promise<ReadEvent[]> {
  const rows = await client.xrange(keys.jobEvents(jobId), '-', '+');
  return rows.map(([id, fields]) => ({ id, event: decodeEvent(fields) }));
}

/** Waits for the job's terminal event and returns the whole stream. */
export async function waitForEnd(client: Redis, jobId: string, timeoutMs = 60_000): Promise<ReadEvent[]> {
  return waitFor(
    `job ${jobId} to end`,
    async () => {
      const evs = await readEvents(client, jobId);
      return evs.length && isTerminal(evs[evs.length - 1].event) ? evs : undefined;
    },
    timeoutMs,
  );
}

export async function usageOf(client: Redis, tenant: string, jobId?: string): Promise<UsageRecord[]> {
  const rows = await client.xrange(keys.tenantUsage(tenant), '-', '+');
  return rows.map(([, f]) => decodeUsage(f)).filter((u) => !jobId || u.jobId === jobId);
}

/** The text and token ids of a stream's token events, failing on a duplicated or missing index. */
export function streamedTokens(evs: ReadEvent[]): { text: string; ids: number[] } {
  let text = '';
  const ids: number[] = [];
  for (const { event } of evs) {
    if (event.type !== 'tokens') continue;
    if (event.index !== ids.length)
      throw new Error(`token index ${event.index} where ${ids.length} was expected`);
    ids.push(...event.ids);
    text += event.text;
  }
  return { text, ids };
}

// ---- SSE over fetch ----

export interface SseMessage {
  id?: string;
  data: string;
}

/**
 * Reads an SSE response, calling `onMessage` per event; resolves with all messages when the server ends
 * the stream or `signal` aborts (an aborted read is a dropped connection, not an error).
 */
export async function readSse(
  url: string,
  init: RequestInit & { onMessage?: (m: SseMessage) => void } = {},
): Promise<{ status: number; headers: Headers; messages: SseMessage[] }> {
  const res = await fetch(url, init);
  const messages: SseMessage[] = [];
  if (!res.ok || !res.body) return { status: res.status, headers: res.headers, messages };
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      for (let sep = buf.indexOf('\n\n'); sep >= 0; sep = buf.indexOf('\n\n')) {
        const block = buf.slice(0, sep);
        buf = buf.slice(sep + 2);
        const m: SseMessage = { data: '' };
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          else if (line.startsWith('id:')) m.id = line.slice(3).trim();
        }
        if (!data.length) continue; // comment / keep-alive
        m.data = data.join('\n');
        messages.push(m);
        init.onMessage?.(m);
        if (init.signal?.aborted) {
          // the client dropped the connection: whatever else was buffered is never seen
          await reader.cancel().catch(() => {});
          return { status: res.status, headers: res.headers, messages };
        }
      }
    }
  } catch (err) {
    if (!init.signal?.aborted) throw err;
  }
  return { status: res.status, headers: res.headers, messages };
}
