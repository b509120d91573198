/**
 * Builds the API app against a real Redis for tests: fail-fast command connection, a subscriber, one
 * cached BullMQ queue per model, the stories260K tokenizer as the model, tenants acme and globex.
 * `emit()` appends a StreamEvent to a job's stream exactly as a worker does (XADD + PUBLISH wake).
 */
import { fileURLToPath } from 'node:url';
import { EVENTS_MAX_LEN, encodeEvent, keys, QUEUE_PREFIX, queueName, type StreamEvent } from '@ppsd/contract';
import { createLogger, type Logger } from '@ppsd/contract/log';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { createApp, type PpsdApp } from '../../apps/api/src/app';
import { type ApiConfig, defaultConfig } from '../../apps/api/src/config';
import { type ModelInfo, modelInfoFromTokenizer, staticRegistry } from '../../apps/api/src/models';
import { FAIL_FAST } from '../../apps/api/src/runtime';
import { createTokenCountPool } from '../../apps/api/src/tokens/pool';
import { loadTokenizer } from '../../workers/engine/src/tokenizer';
import { testKey } from './keys';

export const MODEL = 'stories260K';
export const TOKENIZER_FILE = fileURLToPath(
  new URL('../../../shared/models/stories260K/tok512.bin', import.meta.url),
);

/** Counts on worker threads, as production does (one pool per test file; its threads are unref'd). */
const pool = createTokenCountPool(1);

export async function stories260K(maxContext = 512, id = MODEL): Promise<ModelInfo> {
  return modelInfoFromTokenizer(
    id,
    await loadTokenizer(TOKENIZER_FILE),
    maxContext,
    Date.UTC(2024, 0, 1),
    'f32',
    { countTokens: (text) => pool.count(TOKENIZER_FILE, text) },
  );
}

export const KEY_A = testKey('acme');
export const KEY_B = testKey('globex');
/** Registered as an admin key (PPSD_ADMIN_KEYS) by startApi. */
export const ADMIN_KEY = testKey('root', 'admin');

export interface TestApi {
  app: PpsdApp;
  redis: Redis;
  subscriber: Redis;
  model: ModelInfo;
  queue(model?: string): Queue;
  req(
    path: string,
    init?: { method?: string; key?: string | null; body?: unknown; headers?: Record<string, string> },
  ): Promise<Response>;
  emit(jobId: string, event: StreamEvent): Promise<string>;
  close(): Promise<void>;
}

/**
 * `extraModels` are served next to the model (stories260K unless `opts.model`), e.g. packages with a chat
 * template. `opts.log`: the app's logger (default: silent unless PPSD_TEST_VERBOSE, so test output stays readable).
 */
export async function startApi(
  url: string,
  over: Partial<ApiConfig> = {},
  extraModels: ModelInfo[] = [],
  opts: { model?: ModelInfo; log?: Logger } = {},
): Promise<TestApi> {
  const redis = new Redis(url, { ...FAIL_FAST, lazyConnect: true });
  const subscriber = new Redis(url, { maxRetriesPerRequest: null, lazyConnect: true });
  redis.on('error', () => {});
  subscriber.on('error', () => {});
  await Promise.all([redis.connect(), subscriber.connect()]);
  const model = opts.model ?? (await stories260K());
  const queues = new Map<string, Queue>();
  const queue = (m = MODEL) => {
    let q = queues.get(m);
    if (!q) {
      q = new Queue(queueName(m), { connection: redis, prefix: QUEUE_PREFIX });
      q.on('error', () => {});
      queues.set(m, q);
    }
    return q;
  };
  const config = defaultConfig({
    models: [{ id: MODEL }, ...extraModels.map((m) => ({ id: m.id }))],
    pollMs: 200,
    keepAliveMs: 60_000,
    redisTimeoutMs: 1_500,
    ...over,
  });
  const app = createApp({
    redis,
    subscriber,
    queues: queue,
    models: staticRegistry([model, ...extraModels]),
    config,
    metrics: new Registry(),
    log:
      opts.log ?? createLogger({ service: 'api', level: process.env.PPSD_TEST_VERBOSE ? 'debug' : 'silent' }),
  });
  await app.ctx.tenants.addKey('acme', KEY_A);
  await app.ctx.tenants.addKey('globex', KEY_B);
  await app.ctx.adminKeys.add(ADMIN_KEY, { source: 'config', createdBy: 'bootstrap' });
  return {
    app,
    redis,
    subscriber,
    model,
    queue,
    req: (path, init = {}) => {
      const headers: Record<string, string> = { ...init.headers };
      const key = init.key === undefined ? KEY_A : init.key;
      if (key) headers.Authorization = `Bearer ${key}`;
      let body: string | undefined;
      if (init.body !== undefined) {
        body = typeof init.body === 'string' ? init.body : JSON.stringify(init.body);
        headers['Content-Type'] ??= 'application/json';
      }
      return Promise.resolve(
        app.request(path, { method: init.method ?? (body ? 'POST' : 'GET'), headers, body }),
      );
    },
    emit: async (jobId, event) => {
      const id = (await redis.xadd(
        keys.jobEvents(jobId),
        'MAXLEN',
        '~',
        EVENTS_MAX_LEN,
        '*',
        ...encodeEvent(event),
      ))!;
      await redis.publish(keys.jobWake(jobId), id);
      return id;
    },
    close: async () => {
      app.dispose();
      await Promise.allSettled([...queues.values()].map((q) => q.close()));
      redis.disconnect();
      subscriber.disconnect();
    },
  };
}

/** Parses an SSE body into events ({id?, data}); comment lines are skipped. */
export function parseSse(text: string): { id?: string; data: string }[] {
  return text
    .split('\n\n')
    .filter((b) => b.trim() && !b.startsWith(':'))
    .map((block) => {
      const ev: { id?: string; data: string } = { data: '' };
      for (const line of block.split('\n')) {
        if (line.startsWith('id: ')) ev.id = line.slice(4);
        else if (line.startsWith('data: ')) ev.data += line.slice(6);
      }
      return ev;
    });
}

export const doneEvent = (text: string, tokens: number, promptTokens: number, attempt = 1): StreamEvent => ({
  type: 'done',
  attempt,
  result: {
    text,
    finishReason: 'stop',
    usage: { prompt_tokens: promptTokens, completion_tokens: tokens, total_tokens: promptTokens + tokens },
    speculation: {
      decoder: 'ar',
      draftsProposed: 0,
      draftsAccepted: 0,
      acceptanceRate: 0,
      meanAcceptedLength: 1,
    },
  },
});
