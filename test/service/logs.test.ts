/**
 * Structured logs (@ppsd/contract/log): every line JSON with level, time, service and msg.
 * - API (the app on a real Redis, its logger passed in): a request id per request (a sane incoming
 *   x-request-id kept, anything else replaced, echoed in the response header), reqId on every line of the
 *   request, tenant once authenticated, the enqueued job's id on the enqueue line (requests join jobs),
 *   one access line per request, the stream relay's line with the job id.
 * - Worker (the job runner in-process on real Redis with the real stories260K engine): every line of a job
 *   attempt carries jobId, tenant and attempt (and the worker's id): a retried attempt, a cancel, the
 *   first use of a decoder (its probe).
 */
import { randomUUID } from 'node:crypto';
import { keys, QUEUE_PREFIX, queueName } from '@ppsd/contract';
import { createLogger, type LogLine, prettyLogLine } from '@ppsd/contract/log';
import { Engine } from '@ppsd/engine';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelRegistry } from '../../workers/gpu-worker/src/cancel';
import { DecoderSupport } from '../../workers/gpu-worker/src/engine';
import type { WorkerEngine } from '../../workers/gpu-worker/src/engine-types';
import { createProcessor } from '../../workers/gpu-worker/src/job-runner';
import { ADMIN_KEY, MODEL as API_MODEL, doneEvent, startApi, type TestApi } from '../helpers/api-app';
import { type CapturedLogger, captureLogger } from '../helpers/logs';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import { enqueue, MODEL, makeJob, readEvents, storiesPackage, waitFor, waitForEnd } from '../helpers/stack';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

let server: RedisServer;

beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  await server?.stop();
});

/** What every line of every service has. */
function expectBaseFields(lines: LogLine[], service: string) {
  expect(lines.length).toBeGreaterThan(0);
  for (const l of lines) {
    expect(l.service).toBe(service);
    expect(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).toContain(l.level);
    expect(l.time).toMatch(ISO);
    expect(typeof l.msg).toBe('string');
  }
}

describe('createLogger', () => {
  it('writes one JSON object per line, at the level asked (PPSD_LOG_LEVEL semantics)', () => {
    const raw: string[] = [];
    const log = createLogger({
      service: 'worker',
      level: 'warn',
      base: { workerId: 'w9' },
      destination: { write: (s: string) => void raw.push(s) },
    });
    log.info('not shown');
    log.child({ jobId: 'job_1', tenant: 'acme', attempt: 2 }).warn({ tokens: 3 }, 'shown');
    expect(raw).toHaveLength(1);
    expect(raw[0].endsWith('\n')).toBe(true);
    expect(JSON.parse(raw[0])).toMatchObject({
      level: 'warn',
      service: 'worker',
      workerId: 'w9',
      jobId: 'job_1',
      tenant: 'acme',
      attempt: 2,
      tokens: 3,
      msg: 'shown',
    });
    expect(prettyLogLine(raw[0].trim())).toMatch(/ WARN +\[worker w9 tenant acme job_1#2\] shown tokens=3$/);
    expect(prettyLogLine('plain text')).toBe('plain text');
  });

  it('an unknown level is reported once and info is used', () => {
    const raw: string[] = [];
    const log = createLogger({
      service: 'api',
      level: 'loud',
      destination: { write: (s: string) => void raw.push(s) },
    });
    log.debug('hidden');
    log.info('kept');
    expect(raw.map((l) => JSON.parse(l).msg)).toEqual([
      expect.stringMatching(/PPSD_LOG_LEVEL 'loud' is not one of/),
      'kept',
    ]);
  });
});

describe('API logs', () => {
  let api: TestApi;
  let cap: CapturedLogger;
  const ofReq = (reqId: string) => cap.lines().filter((l) => l.reqId === reqId);
  const accessLine = (reqId: string) => ofReq(reqId).find((l) => l.msg === 'request');

  beforeAll(async () => {
    cap = captureLogger('api');
    api = await startApi(server.url, {}, [], { log: cap.log });
  });
  afterAll(async () => {
    await api?.close();
  });

  it('keeps a sane x-request-id, echoes it, and puts it and the tenant on every line of the request', async () => {
    const reqId = 'trace-7f3a9c.01';
    const res = await api.req('/v1/jobs', {
      body: { prompt: 'Once upon a time', max_tokens: 4 },
      headers: { 'x-request-id': reqId },
    });
    expect(res.status).toBe(202);
    expect(res.headers.get('x-request-id')).toBe(reqId);
    const { id } = (await res.json()) as { id: string };
    const lines = ofReq(reqId);
    expectBaseFields(lines, 'api');
    for (const l of lines) expect(l.tenant).toBe('acme');
    // the enqueue line joins the request to its job
    expect(lines.find((l) => l.msg === 'job enqueued')).toMatchObject({
      jobId: id,
      model: API_MODEL,
      kind: 'completion',
      maxTokens: 4,
    });
    expect(accessLine(reqId)).toMatchObject({
      level: 'info',
      method: 'POST',
      path: '/v1/jobs',
      status: 202,
      ms: expect.any(Number),
    });
  });

  it('generates a request id when none or an unusable one is sent', async () => {
    for (const sent of [undefined, 'has spaces/and slashes', 'x'.repeat(300), '<script>']) {
      const res = await api.req('/v1/models', {
        headers: sent === undefined ? {} : { 'x-request-id': sent },
      });
      expect(res.status).toBe(200);
      const reqId = res.headers.get('x-request-id')!;
      expect(reqId).toMatch(UUID);
      expect(accessLine(reqId)).toMatchObject({
        method: 'GET',
        path: '/v1/models',
        status: 200,
        tenant: 'acme',
      });
    }
  });

  it('an unauthenticated request gets an access line with its id and error code, no tenant', async () => {
    const res = await api.req('/v1/models', { key: null, headers: { 'x-request-id': 'anon-1' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('x-request-id')).toBe('anon-1');
    const lines = ofReq('anon-1');
    expectBaseFields(lines, 'api');
    expect(lines.every((l) => l.tenant === undefined)).toBe(true);
    expect(accessLine('anon-1')).toMatchObject({ status: 401, code: 'missing_api_key' });
  });

  it('a completion: the enqueue line names the job the answer comes from', async () => {
    const pending = api.req('/v1/completions', {
      body: { model: API_MODEL, prompt: 'Once upon a time', max_tokens: 3 },
      headers: { 'x-request-id': 'join-1' },
    });
    const enqueued = await waitFor('the enqueue line', () =>
      ofReq('join-1').find((l) => l.msg === 'job enqueued'),
    );
    const jobId = enqueued.jobId as string;
    await api.emit(jobId, { type: 'tokens', attempt: 1, index: 0, ids: [300], text: ' there' });
    await api.emit(jobId, doneEvent(' there', 1, 5));
    const res = await pending;
    expect(res.status).toBe(200);
    expect(res.headers.get('x-request-id')).toBe('join-1');
    expect(((await res.json()) as { id: string }).id).toBe(jobId);
    const lines = ofReq('join-1');
    expectBaseFields(lines, 'api');
    for (const l of lines) expect(l.tenant).toBe('acme');
    expect(accessLine('join-1')).toMatchObject({ path: '/v1/completions', status: 200 });
  });

  it('the stream relay logs its end with the request id, tenant and job id', async () => {
    const created = await api.req('/v1/jobs', { body: { prompt: 'Once upon a time', max_tokens: 2 } });
    const { id } = (await created.json()) as { id: string };
    await api.emit(id, { type: 'tokens', attempt: 1, index: 0, ids: [300, 301], text: ' a b' });
    await api.emit(id, doneEvent(' a b', 2, 5));
    const res = await api.req(`/v1/jobs/${id}/stream`, { headers: { 'x-request-id': 'relay-1' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-request-id')).toBe('relay-1');
    await res.text(); // the stream closes after `done`
    const ended = await waitFor('the relay line', () =>
      ofReq('relay-1').find((l) => l.msg === 'stream relay ended'),
    );
    expect(ended).toMatchObject({ tenant: 'acme', jobId: id, events: 2, clientGone: false });
    expect(accessLine('relay-1')).toMatchObject({ path: `/v1/jobs/${id}/stream`, status: 200 });
    expectBaseFields(ofReq('relay-1'), 'api');
  });

  it('an admin request carries the admin key prefix', async () => {
    const res = await api.req('/admin/tenants', { key: ADMIN_KEY, headers: { 'x-request-id': 'adm-1' } });
    expect(res.status).toBe(200);
    expect(accessLine('adm-1')).toMatchObject({
      admin: expect.stringMatching(/^(ppsd|cfg)_admin_/),
      status: 200,
    });
  });

  it('every line the app wrote is a JSON log line with a request id', () => {
    const lines = cap.lines(); // throws on a line that is not JSON
    expectBaseFields(lines, 'api');
    for (const l of lines) expect(typeof l.reqId).toBe('string');
  });
});

describe('worker logs', () => {
  let redis: Redis;
  let engine: Engine;
  let pkg: { dir: string; cleanup(): Promise<void> };

  beforeAll(async () => {
    redis = new Redis(server.url, { maxRetriesPerRequest: null });
    await redis.flushall(); // the API tests' jobs are not this worker's
    pkg = await storiesPackage();
    engine = await Engine.open(pkg.dir, { decoder: 'ar' });
  });
  afterAll(async () => {
    await engine?.close();
    redis?.disconnect();
    await pkg?.cleanup();
  });

  it('every line of a job attempt carries jobId, tenant, attempt and the worker id', async () => {
    const FLAKY = 'Once upon a time there was a fault';
    let faulted = false;
    const flaky: WorkerEngine = {
      close: () => engine.close(),
      async generate(prompt, params, onTokens) {
        const inject = prompt === FLAKY && !faulted;
        if (inject) faulted = true;
        return engine.generate(prompt, params, async (ev) => {
          if (inject && ev.index >= 4) throw new Error('injected fault: device lost');
          await onTokens?.(ev);
        });
      },
    };
    const cap = captureLogger('worker', { workerId: 'w-logs' });
    const cancels = new CancelRegistry(redis);
    const support = new DecoderSupport(flaky, 'ar', (m) => cap.log.info(m));
    const tenant = 'logs-tenant';
    const worker = new Worker(
      queueName(MODEL),
      createProcessor({
        redis,
        engine: flaky,
        workerId: 'w-logs',
        model: MODEL,
        defaultDecoder: 'ar',
        decoders: ['ar', 'eesd'],
        ensureDecoder: (d, log) => support.ensure(d, log),
        stages: 1,
        cancels,
        log: cap.log,
        tokenDelayMs: 5,
      }),
      { connection: new Redis(server.url, { maxRetriesPerRequest: null }), prefix: QUEUE_PREFIX },
    );
    try {
      // 1. a failed attempt, then a retry that completes
      const retried = randomUUID();
      await enqueue(server.url, makeJob(retried, { tenant, prompt: FLAKY, maxTokens: 12, seed: 3 }), 3);
      expect((await waitForEnd(redis, retried)).at(-1)?.event.type).toBe('done');
      // 2. cancelled mid-generation
      const cancelled = randomUUID();
      await enqueue(server.url, makeJob(cancelled, { tenant, maxTokens: 400, temperature: 1, seed: 9 }));
      await waitFor('first tokens', async () =>
        (await readEvents(redis, cancelled)).some((e) => e.event.type === 'tokens'),
      );
      expect(cancels.cancel(cancelled, 'test')).toBe(true);
      await waitForEnd(redis, cancelled);
      // 3. the first job asking for another decoder: the probe (open + warm-up) is logged as that job's
      const probed = randomUUID();
      await enqueue(server.url, makeJob(probed, { tenant, speculation: { decoder: 'eesd' } }));
      await waitForEnd(redis, probed);
      await waitFor('the last end line', () => cap.lines().some((l) => l.jobId === probed && l.status));

      const lines = cap.lines(); // throws on a line that is not JSON
      expectBaseFields(lines, 'worker');
      for (const l of lines) {
        expect(l.workerId).toBe('w-logs');
        expect([retried, cancelled, probed]).toContain(l.jobId);
        expect(l.tenant).toBe(tenant);
        expect(Number.isInteger(l.attempt) && (l.attempt as number) >= 1).toBe(true);
      }
      // lines that mention a job are that job's lines
      for (const id of [retried, cancelled, probed])
        for (const l of lines.filter((x) => x.msg.includes(id))) expect(l.jobId).toBe(id);

      const of = (id: string) => lines.filter((l) => l.jobId === id);
      expect([...new Set(of(retried).map((l) => l.attempt))]).toEqual([1, 2]);
      expect(of(retried).find((l) => l.attempt === 1 && l.status === 'error')).toMatchObject({
        level: 'warn',
        final: false,
        error: 'injected fault: device lost',
      });
      expect(of(retried).find((l) => l.attempt === 2 && l.publishedTokens)).toMatchObject({
        decoder: 'ar',
        publishedTokens: 4,
      });
      expect(of(retried).find((l) => l.attempt === 2 && l.status)).toMatchObject({
        status: 'completed',
        final: true,
      });
      expect(of(cancelled).some((l) => /cancelling \(test\)/.test(l.msg))).toBe(true);
      expect(of(cancelled).find((l) => l.status)).toMatchObject({ status: 'cancelled', attempt: 1 });
      // 'decoder eesd opened and warmed' or 'decoder eesd not available: ...'
      expect(of(probed).some((l) => /^decoder eesd /.test(l.msg))).toBe(true);
      expect(['completed', 'error']).toContain(of(probed).find((l) => l.status)?.status);
      expect(await redis.hget(keys.tenantReservations(tenant), retried)).toBeNull();
    } finally {
      await worker.close();
    }
  });
});
