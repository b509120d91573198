/**
 * Admission: the enqueued GenerationJob, tenant queue limit and token quota (429 + Retry-After),
 * Idempotency-Key, cancel of a queued job, and a dead Redis answering 503 quickly.
 */
import {
  encodeUsage,
  type GenerationJob,
  keys,
  QUEUE_PREFIX,
  queueName,
  type UsageRecord,
} from '@ppsd/contract';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { jobMetaKey } from '../../apps/api/src/jobs';
import { doneEvent, KEY_B, MODEL, parseSse, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url, { tenantMaxJobs: 3, tenantTokenQuota: 0, retryAfterSeconds: 7 });
});
afterAll(async () => {
  await api?.close();
  await server?.stop();
});
beforeEach(async () => {
  await api.queue().obliterate({ force: true });
  const tenantsAndKeys = await Promise.all([
    api.redis.hgetall(keys.apiKeys),
    api.redis.hgetall(keys.tenants),
  ]);
  await api.redis.flushall();
  await api.redis.hset(keys.apiKeys, tenantsAndKeys[0]);
  await api.redis.hset(keys.tenants, tenantsAndKeys[1]);
  api.app.ctx.config.tenantTokenQuota = 0;
  api.app.ctx.config.tenantMaxJobs = 3;
});

const createJob = (
  body: Record<string, unknown>,
  init: { key?: string; headers?: Record<string, string> } = {},
) => api.req('/v1/jobs', { body, ...init });

describe('enqueue', () => {
  it('enqueues one GenerationJob with its public id, counted prompt tokens, a drawn seed and retries', async () => {
    const res = await createJob({ prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stop: '\n' });
    expect(res.status).toBe(202);
    const { id, status, object } = (await res.json()) as { id: string; status: string; object: string };
    expect(object).toBe('job');
    expect(status).toBe('queued');
    expect(id).toMatch(/^job_/);
    const job = await api.queue().getJob(id);
    expect(job).toBeDefined();
    expect(job!.opts.attempts).toBe(3);
    const data = job!.data as GenerationJob;
    expect(data).toMatchObject({
      id,
      tenant: 'acme',
      model: MODEL,
      kind: 'completion',
      prompt: 'Once upon a time',
      promptTokens: await api.model.countPromptTokens('Once upon a time'),
      params: { maxTokens: 20, temperature: 0, topP: 1, stop: ['\n'] },
      speculation: 'auto',
    });
    expect(data.reservedTokens).toBe(data.promptTokens + 20);
    expect(Number.isInteger(data.params.seed)).toBe(true);
    expect(await api.redis.hget(keys.tenantReservations('acme'), id)).toBe(String(data.reservedTokens));

    const chat = await createJob({
      messages: [
        { role: 'system', content: 'Be short.' },
        { role: 'user', content: 'Tell a story' },
      ],
      seed: 7,
      speculation: { decoder: 'ppsd', stages: 2 },
    });
    const chatJob = (await api.queue().getJob(((await chat.json()) as { id: string }).id))!
      .data as GenerationJob;
    expect(chatJob.kind).toBe('chat');
    expect(chatJob.prompt).toBe('Be short.\nTell a story');
    expect(chatJob.params.seed).toBe(7);
    expect(chatJob.speculation).toEqual({ decoder: 'ppsd', stages: 2 });
    expect(chatJob.params.maxTokens).toBe(256);

    const sum = await createJob({ text: '  A long text.  ' });
    const sumJob = (await api.queue().getJob(((await sum.json()) as { id: string }).id))!
      .data as GenerationJob;
    expect(sumJob.kind).toBe('summarize');
    expect(sumJob.prompt).toBe('A long text.\n\nIn short:');
  });
});

describe('429', () => {
  it('tenant queue limit: the 4th unfinished job is refused with Retry-After; another tenant is not affected', async () => {
    for (let i = 0; i < 3; i++) expect((await createJob({ prompt: `p${i}` })).status).toBe(202);
    const res = await createJob({ prompt: 'p3' });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('7');
    const body = (await res.json()) as { error: { type: string; code: string } };
    expect(body.error).toMatchObject({ type: 'rate_limit_error', code: 'tenant_queue_limit' });
    expect(await api.queue().getWaitingCount()).toBe(3);
    expect((await createJob({ prompt: 'b' }, { key: KEY_B })).status).toBe(202);
    // a job ending (the worker releases its reservation) makes room again
    const [first] = await api.redis.hkeys(keys.tenantReservations('acme'));
    await api.app.ctx.quota.releaseOnly('acme', first);
    expect((await createJob({ prompt: 'p4' })).status).toBe(202);
  });

  it('token quota: reserved + used tokens over the limit -> 429 quota_exceeded with Retry-After', async () => {
    api.app.ctx.config.tenantTokenQuota = 100;
    api.app.ctx.config.tenantMaxJobs = 0;
    const p = await api.model.countPromptTokens('Hi');
    expect((await createJob({ prompt: 'Hi', max_tokens: 60 - p })).status).toBe(202); // reserves 60
    const over = await createJob({ prompt: 'Hi', max_tokens: 50 - p });
    expect(over.status).toBe(429);
    expect(((await over.json()) as { error: { code: string } }).error.code).toBe('quota_exceeded');
    // while tokens are only reserved, retry soon
    expect(over.headers.get('retry-after')).toBe('7');
    expect((await createJob({ prompt: 'Hi', max_tokens: 40 - p })).status).toBe(202); // exactly 100

    // the jobs end: the worker writes usage records and releases the reservations
    const ids = await api.redis.hkeys(keys.tenantReservations('acme'));
    for (const jobId of ids) {
      const rec: UsageRecord = {
        tenant: 'acme',
        jobId,
        attempt: 1,
        model: MODEL,
        status: 'completed',
        finishReason: 'stop',
        promptTokens: p,
        completionTokens: 30,
        draftTokensProposed: 0,
        draftTokensAccepted: 0,
        decoder: 'ar',
        wallMs: 5,
        deviceSeconds: 0.005,
        endedAt: Date.now(),
      };
      await api.redis.xadd(keys.tenantUsage('acme'), '*', ...encodeUsage(rec));
      await api.app.ctx.quota.releaseOnly('acme', jobId);
    }
    const used = 2 * (p + 30);
    const left = 100 - used;
    const after = await createJob({ prompt: 'Hi', max_tokens: left - p + 1 });
    expect(after.status).toBe(429);
    // nothing reserved: only the next period helps
    expect(Number(after.headers.get('retry-after'))).toBeGreaterThan(60);
    expect((await createJob({ prompt: 'Hi', max_tokens: left - p })).status).toBe(202);
    const state = await api.app.ctx.quota.state('acme');
    expect(state.used).toBe(used);
    expect(state.reserved).toBe(left);
  });

  it('a per-tenant limit in the quota hash overrides the default', async () => {
    await api.redis.hset(keys.tenantQuota('globex'), 'limit', 10);
    const res = await createJob({ prompt: 'Hello', max_tokens: 20 }, { key: KEY_B });
    expect(res.status).toBe(429);
    expect((await createJob({ prompt: 'Hello', max_tokens: 20 })).status).toBe(202);
  });
});

describe('Idempotency-Key', () => {
  it('the same tenant + key returns the same job; nothing is enqueued twice', async () => {
    const h = { 'Idempotency-Key': 'order-42' };
    const a = await createJob({ prompt: 'Once' }, { headers: h });
    expect(a.status).toBe(202);
    const b = await createJob({ prompt: 'Once' }, { headers: h });
    expect(b.status).toBe(200);
    const idA = ((await a.json()) as { id: string }).id;
    expect(((await b.json()) as { id: string }).id).toBe(idA);
    expect(await api.queue().getWaitingCount()).toBe(1);
    expect(await api.redis.hlen(keys.tenantReservations('acme'))).toBe(1);
    // another tenant with the same key gets its own job
    const c = await createJob({ prompt: 'Once' }, { key: KEY_B, headers: h });
    expect(c.status).toBe(202);
    expect(((await c.json()) as { id: string }).id).not.toBe(idA);
    // concurrent duplicates
    const many = await Promise.all(
      Array.from({ length: 8 }, () =>
        createJob({ prompt: 'x' }, { headers: { 'Idempotency-Key': 'burst' } }),
      ),
    );
    const ids = new Set(await Promise.all(many.map(async (r) => ((await r.json()) as { id: string }).id)));
    expect(ids.size).toBe(1);
    expect(await api.queue().getWaitingCount()).toBe(3);
  });

  it('works on the OpenAI endpoints too (a streamed completion resumes the same job)', async () => {
    const h = { 'Idempotency-Key': 'stream-1' };
    const ac = new AbortController();
    const first = await api.req('/v1/completions', {
      body: { model: MODEL, prompt: 'x', stream: true },
      headers: h,
    });
    expect(first.status).toBe(200);
    await first.body?.cancel();
    ac.abort();
    const [jobId] = await api.redis.hkeys(keys.tenantReservations('acme'));
    expect(await api.queue().getWaitingCount()).toBe(1);
    const again = await api.req('/v1/completions', {
      body: { model: MODEL, prompt: 'x', stream: true },
      headers: h,
    });
    const reader = again.body!.getReader();
    await api.emit(jobId, { type: 'tokens', attempt: 1, index: 0, ids: [5], text: 'Hi' });
    await api.emit(jobId, doneEvent('Hi', 1, 2));
    let text = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    const events = parseSse(text);
    expect(JSON.parse(events[0].data).id).toBe(jobId);
    expect(events.at(-1)?.data).toBe('[DONE]');
    expect(await api.queue().getWaitingCount()).toBe(1);
  });
});

describe('cancel', () => {
  it('a queued job is removed from the queue and ended by the API: end event, usage record, quota released', async () => {
    const res = await createJob({ prompt: 'Once', max_tokens: 10 });
    const { id } = (await res.json()) as { id: string };
    const cancel = await api.req(`/v1/jobs/${id}/cancel`, { method: 'POST' });
    expect(cancel.status).toBe(200);
    const view = (await cancel.json()) as { status: string; finish_reason: string };
    expect(view.status).toBe('cancelled');
    expect(view.finish_reason).toBe('cancelled');
    expect(await api.queue().getJob(id)).toBeUndefined();
    expect(await api.redis.get(keys.jobCancelled(id))).toBe('1');
    expect(await api.redis.hlen(keys.tenantReservations('acme'))).toBe(0);
    expect(Number(await api.redis.hget(keys.tenantQuota('acme'), 'reserved'))).toBe(0);
    const usage = (await (await api.req('/v1/usage')).json()) as { data: UsageRecord[] };
    expect(usage.data).toHaveLength(1);
    expect(usage.data[0]).toMatchObject({ jobId: id, status: 'cancelled', completionTokens: 0 });
    // cancelling again changes nothing
    expect((await api.req(`/v1/jobs/${id}/cancel`, { method: 'POST' })).status).toBe(200);
    expect(await api.redis.xlen(keys.jobEvents(id))).toBe(1);
    expect(((await (await api.req('/v1/usage')).json()) as { data: unknown[] }).data).toHaveLength(1);
  });

  it('a running job gets the cancel flag and broadcast, and stays for its worker to end', async () => {
    const { id } = (await (await createJob({ prompt: 'Once' })).json()) as { id: string };
    let release: () => void = () => {};
    let started: () => void = () => {};
    const running = new Promise<void>((r) => {
      started = r;
    });
    const conn = new Redis(server.url, { maxRetriesPerRequest: null });
    conn.on('error', () => {});
    const worker = new Worker(
      queueName(MODEL),
      () =>
        new Promise<void>((r) => {
          release = r;
          started();
        }),
      { connection: conn, prefix: QUEUE_PREFIX },
    );
    await running;
    const sub = api.subscriber.duplicate();
    const got = new Promise<string>((resolve) => sub.on('message', (_c, m) => resolve(m)));
    await sub.subscribe(keys.cancelChannel);
    const res = await api.req(`/v1/jobs/${id}/cancel`, { method: 'POST' });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { status: string }).status).toBe('running');
    expect(await got).toBe(id);
    expect(await api.redis.get(keys.jobCancelled(id))).toBe('1');
    expect(await api.queue().getJobState(id)).toBe('active');
    expect(await api.redis.hlen(keys.tenantReservations('acme'))).toBe(1); // the worker settles
    release();
    sub.disconnect();
    await worker.close();
    conn.disconnect();
  });
});

describe('Redis down', () => {
  it('admission and lookups answer 503 quickly instead of hanging, and recover after a restart', async () => {
    const { id } = (await (await createJob({ prompt: 'Once' })).json()) as { id: string };
    await server.kill();
    const t0 = Date.now();
    const res = await createJob({ prompt: 'Once' });
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBeTruthy();
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe('service_unavailable');
    expect((await api.req(`/v1/jobs/${id}`)).status).toBe(503);
    expect((await api.req('/healthz', { key: null })).status).toBe(200);
    expect((await api.req('/readyz', { key: null })).status).toBe(503);
    expect(Date.now() - t0).toBeLessThan(10_000);
    await server.start();
    for (let i = 0; i < 100 && api.redis.status !== 'ready'; i++)
      await new Promise((r) => setTimeout(r, 100));
    expect(api.redis.status).toBe('ready');
    expect(await api.redis.exists(jobMetaKey(id))).toBe(1); // AOF kept it
    expect((await api.req(`/v1/jobs/${id}`)).status).toBe(200);
    expect((await createJob({ prompt: 'Once' })).status).toBe(202);
  });
});
