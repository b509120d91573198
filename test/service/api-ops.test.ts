/**
 * Operations: /healthz, /readyz (Redis + a fresh ready worker heartbeat), /metrics with the contract's
 * names, the Lambda response-streaming handler fed a Function URL event, config validation, bootstrap.
 */
import { Writable } from 'node:stream';
import { keys, WORKER_STALE_MS, type WorkerHeartbeat } from '@ppsd/contract';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTenantStore } from '../../apps/api/src/adapters/tenants';
import { bootstrapKeys } from '../../apps/api/src/bootstrap';
import { ConfigError, loadConfig } from '../../apps/api/src/config';
import { doneEvent, KEY_A, MODEL, parseSse, startApi, type TestApi } from '../helpers/api-app';
import { TEST_KEY_SECRET, testKey } from '../helpers/keys';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url);
});
afterAll(async () => {
  await api?.close();
  await server?.stop();
});

const heartbeat = (over: Partial<WorkerHeartbeat> = {}): WorkerHeartbeat => ({
  workerId: 'w1',
  modelId: MODEL,
  ready: true,
  decoders: ['ar', 'ppsd'],
  devices: ['cuda:0'],
  busy: 0,
  at: Date.now(),
  ...over,
});

describe('health', () => {
  it('/healthz is 200', async () => {
    const res = await api.req('/healthz', { key: null });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok' });
  });

  it('/readyz is 503 without a heartbeat, with a stale or not-ready one, 200 with a fresh ready one', async () => {
    const ready = async () => {
      const res = await api.req('/readyz', { key: null });
      return [res.status, await res.json()] as const;
    };
    expect((await ready())[0]).toBe(503);
    await api.redis.hset(
      keys.workers(MODEL),
      'w1',
      JSON.stringify(heartbeat({ at: Date.now() - WORKER_STALE_MS - 1000 })),
    );
    expect((await ready())[0]).toBe(503);
    await api.redis.hset(keys.workers(MODEL), 'w1', JSON.stringify(heartbeat({ ready: false })));
    expect((await ready())[0]).toBe(503);
    await api.redis.hset(keys.workers(MODEL), 'w1', JSON.stringify(heartbeat()));
    const [status, body] = await ready();
    expect(status).toBe(200);
    expect(body).toEqual({
      status: 'ready',
      redis: true,
      models: { [MODEL]: { ready_workers: 1, workers: 1 } },
    });
    await api.redis.del(keys.workers(MODEL));
  });
});

describe('/metrics', () => {
  it('exposes the contract metric names with queue counts, worker counters and relayed-job latencies', async () => {
    await api.redis.hset(keys.metrics(MODEL), {
      spec_decode_num_drafts_total: 12,
      spec_decode_num_draft_tokens_total: 48,
      spec_decode_num_accepted_tokens_total: 30,
      'stage_busy_seconds_total:0': 1.5,
      'stage_idle_seconds_total:1': 0.25,
    });
    // one relayed completion (events written as a worker would)
    const pending = api.req('/v1/completions', { body: { model: MODEL, prompt: 'Once', max_tokens: 2 } });
    let jobId: string | undefined;
    for (let i = 0; i < 100 && !jobId; i++) {
      [jobId] = await api.redis.hkeys(keys.tenantReservations('acme'));
      if (!jobId) await new Promise((r) => setTimeout(r, 20));
    }
    await api.emit(jobId!, { type: 'start', attempt: 1, workerId: 'w', decoder: 'ar', queuedMs: 40 });
    await api.emit(jobId!, { type: 'tokens', attempt: 1, index: 0, ids: [1, 2], text: ' a b' });
    await api.emit(jobId!, doneEvent(' a b', 2, 2));
    expect((await pending).status).toBe(200);
    // a second job (the first is still in BullMQ too: no real worker took it)
    expect((await api.req('/v1/jobs', { body: { prompt: 'x' } })).status).toBe(202);

    const res = await api.req('/metrics', { key: null });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    for (const name of [
      'ppsd:time_to_first_token_seconds',
      'ppsd:inter_token_latency_seconds',
      'ppsd:e2e_request_latency_seconds',
      'ppsd:request_queue_time_seconds',
      'ppsd:num_requests_running',
      'ppsd:num_requests_waiting',
      'ppsd:spec_decode_num_drafts_total',
      'ppsd:spec_decode_num_draft_tokens_total',
      'ppsd:spec_decode_num_accepted_tokens_total',
    ]) {
      expect(text).toContain(`# TYPE ${name} `);
    }
    expect(text).toContain(`ppsd:spec_decode_num_draft_tokens_total{model_name="${MODEL}"} 48`);
    expect(text).toContain(`ppsd:num_requests_waiting{model_name="${MODEL}"} 2`);
    expect(text).toContain(`ppsd:num_requests_running{model_name="${MODEL}"} 0`);
    expect(text).toContain(`ppsd:time_to_first_token_seconds_count{model_name="${MODEL}"} 1`);
    expect(text).toContain(`ppsd:inter_token_latency_seconds_count{model_name="${MODEL}"} 1`);
    expect(text).toContain(`ppsd:request_queue_time_seconds_sum{model_name="${MODEL}"} 0.04`);
    expect(text).toContain(`ppsd:pipeline_stage_busy_seconds_total{model_name="${MODEL}",stage="0"} 1.5`);
    expect(text).toContain(`ppsd:pipeline_stage_idle_seconds_total{model_name="${MODEL}",stage="1"} 0.25`);
    expect(text).toMatch(
      /ppsd_http_requests_total\{method="POST",route="\/v1\/completions",status="200"\} 1/,
    );
  });
});

describe('AWS Lambda response streaming', () => {
  /** A minimal `awslambda` runtime global: HttpResponseStream.from writes the prelude + 8 NUL bytes. */
  function installShim() {
    const g = globalThis as unknown as { awslambda?: unknown };
    g.awslambda = {
      streamifyResponse: (fn: unknown) => fn,
      HttpResponseStream: {
        from(stream: Writable, prelude: Record<string, unknown>) {
          stream.write(JSON.stringify(prelude));
          stream.write(new Uint8Array(8));
          return stream;
        },
      },
    };
  }

  function functionUrlEvent(
    method: string,
    path: string,
    opts: { query?: string; body?: string; headers?: Record<string, string> } = {},
  ) {
    return {
      version: '2.0',
      routeKey: '$default',
      rawPath: path,
      rawQueryString: opts.query ?? '',
      headers: { host: 'abc.lambda-url.us-east-1.on.aws', 'x-forwarded-proto': 'https', ...opts.headers },
      requestContext: {
        accountId: 'anonymous',
        apiId: 'abc',
        domainName: 'abc.lambda-url.us-east-1.on.aws',
        domainPrefix: 'abc',
        http: { method, path, protocol: 'HTTP/1.1', sourceIp: '127.0.0.1', userAgent: 'test' },
        requestId: 'req-1',
        routeKey: '$default',
        stage: '$default',
        time: new Date().toUTCString(),
        timeEpoch: Date.now(),
      },
      body: opts.body,
      isBase64Encoded: false,
    };
  }

  async function invoke(handler: unknown, event: unknown) {
    const chunks: Buffer[] = [];
    const stream = new Writable({
      write(chunk, _enc, cb) {
        chunks.push(Buffer.from(chunk));
        cb();
      },
    });
    const finished = new Promise<void>((r) => stream.on('finish', () => r()));
    await (handler as (e: unknown, s: Writable, c: unknown) => Promise<void>)(event, stream, {});
    await finished;
    const all = Buffer.concat(chunks);
    const sep = all.indexOf(Buffer.alloc(8));
    return { prelude: JSON.parse(all.subarray(0, sep).toString()), body: all.subarray(sep + 8).toString() };
  }

  it('streams a job SSE body and JSON answers through the handler', async () => {
    installShim();
    const { createLambdaHandler } = await import('../../apps/api/src/lambda');
    const handler = createLambdaHandler(api.app);
    const auth = { authorization: `Bearer ${KEY_A}` };

    const created = await invoke(
      handler,
      functionUrlEvent('POST', '/v1/jobs', {
        body: JSON.stringify({ prompt: 'Once', max_tokens: 3 }),
        headers: { ...auth, 'content-type': 'application/json' },
      }),
    );
    expect(created.prelude.statusCode).toBe(202);
    const { id } = JSON.parse(created.body) as { id: string };
    const ids = [
      await api.emit(id, { type: 'tokens', attempt: 1, index: 0, ids: [1], text: ' a' }),
      await api.emit(id, { type: 'tokens', attempt: 1, index: 1, ids: [2], text: ' b' }),
      await api.emit(id, doneEvent(' a b', 2, 2)),
    ];
    const res = await invoke(
      handler,
      functionUrlEvent('GET', `/v1/jobs/${id}/stream`, { query: `starting_after=${ids[0]}`, headers: auth }),
    );
    expect(res.prelude.statusCode).toBe(200);
    expect(res.prelude.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(parseSse(res.body).map((e) => e.id)).toEqual(ids.slice(1));

    const unauthorized = await invoke(handler, functionUrlEvent('GET', '/v1/models'));
    expect(unauthorized.prelude.statusCode).toBe(401);
    expect(JSON.parse(unauthorized.body).error.type).toBe('authentication_error');
  });
});

describe('config', () => {
  it('has defaults and reads every variable', () => {
    const c = loadConfig({ PPSD_MODELS: 'stories260K', PPSD_KEY_SECRET: TEST_KEY_SECRET });
    expect(c).toMatchObject({
      redisUrl: 'redis://127.0.0.1:6379',
      port: 8080,
      models: [{ id: 'stories260K' }],
    });
    const d = loadConfig({
      PPSD_MODELS: 'a=/pk/a, b',
      PPSD_REDIS_URL: 'rediss://r:6380',
      PORT: '9000',
      PPSD_BOOTSTRAP_KEYS: `acme:${testKey('acme1')},globex:${testKey('globex2')}`,
      PPSD_KEY_SECRET: TEST_KEY_SECRET,
      PPSD_MAX_PROMPT_TOKENS: '2048',
      PPSD_TENANT_MAX_JOBS: '5',
      PPSD_TENANT_TOKEN_QUOTA: '100000',
    });
    expect(d.models).toEqual([{ id: 'a', dir: '/pk/a' }, { id: 'b' }]);
    expect(d.bootstrapKeys).toEqual([
      { tenant: 'acme', key: testKey('acme1') },
      { tenant: 'globex', key: testKey('globex2') },
    ]);
    expect(d).toMatchObject({
      port: 9000,
      maxPromptTokens: 2048,
      tenantMaxJobs: 5,
      tenantTokenQuota: 100000,
    });
  });

  it('reports every problem at once, naming the variable', () => {
    let err: unknown;
    try {
      loadConfig({
        PPSD_REDIS_URL: 'http://x',
        PORT: 'eighty',
        PPSD_BOOTSTRAP_KEYS: 'nocolon',
        PPSD_TENANT_MAX_JOBS: '-1',
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    for (const v of [
      'PPSD_REDIS_URL',
      'PORT',
      'PPSD_MODELS',
      'PPSD_BOOTSTRAP_KEYS',
      'PPSD_TENANT_MAX_JOBS',
      'PPSD_KEY_SECRET',
    ]) {
      expect(msg).toContain(v);
    }
    expect((err as ConfigError).problems).toHaveLength(6);
  });
});

describe('bootstrap', () => {
  it('registers PPSD_BOOTSTRAP_KEYS; with none and no key at all it creates one and prints it', async () => {
    await api.redis.flushall();
    const tenants = createTenantStore(api.redis, TEST_KEY_SECRET);
    const logs: string[] = [];
    const r = await bootstrapKeys(tenants, [], (m) => logs.push(m));
    expect(r.created?.tenant).toBe('default');
    expect(logs.join('\n')).toContain(r.created!.key);
    expect((await tenants.authenticate(r.created!.key))?.id).toBe('default');
    expect((await bootstrapKeys(tenants, [], () => {})).created).toBeUndefined();

    const key = testKey('acme1');
    const given = await bootstrapKeys(tenants, [{ tenant: 'acme', key }], () => {});
    expect(given.added).toEqual(['acme']);
    expect((await tenants.authenticate(key))?.id).toBe('acme');
    expect((await bootstrapKeys(tenants, [{ tenant: 'acme', key }], () => {})).added).toEqual([]);
  });
});
