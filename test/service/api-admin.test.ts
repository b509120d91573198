/**
 * The admin API (/admin/): admin keys only (a tenant key is 403, an admin key is refused on /v1/),
 * tenants, key issue / list / revoke (refused on the next request), limits, allowed models, the usage
 * export (JSON and CSV per tenant, model and day), the audit log, live stats, admin keys, OpenAPI.
 */
import { type AuditEntry, encodeUsage, keys, type UsageRecord, type UsageRow } from '@ppsd/contract';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, KEY_A, KEY_B, MODEL, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url, { tenantMaxJobs: 5 });
});
afterAll(async () => {
  await api?.close();
  await server?.stop();
});

const admin = (path: string, init: { method?: string; body?: unknown; key?: string | null } = {}) =>
  api.req(path, { key: ADMIN_KEY, ...init });

async function json<T>(res: Response, status: number): Promise<T> {
  const text = await res.text();
  expect(res.status, text).toBe(status);
  return JSON.parse(text) as T;
}

const ADMIN_ROUTES: [string, string][] = [
  ['GET', '/admin/tenants'],
  ['POST', '/admin/tenants'],
  ['GET', '/admin/tenants/acme'],
  ['PATCH', '/admin/tenants/acme'],
  ['PUT', '/admin/tenants/acme/quota'],
  ['POST', '/admin/tenants/acme/keys'],
  ['GET', '/admin/tenants/acme/keys'],
  ['GET', '/admin/keys'],
  ['DELETE', '/admin/keys/ppsd_acme00000000'],
  ['GET', '/admin/usage'],
  ['GET', '/admin/audit'],
  ['GET', '/admin/stats'],
  ['GET', '/admin/admin-keys'],
  ['POST', '/admin/admin-keys'],
  ['DELETE', '/admin/admin-keys/ppsd_admin_root00000000'],
];

describe('admin auth and isolation', () => {
  it('every admin route: no key 401, unknown key 401, tenant key 403; nothing changes', async () => {
    const before = JSON.stringify(await api.redis.hgetall(keys.apiKeys));
    for (const [method, path] of ADMIN_ROUTES) {
      const body = method === 'GET' || method === 'DELETE' ? undefined : {};
      const none = await api.req(path, { method, body, key: null });
      expect(none.status, `${method} ${path}`).toBe(401);
      const unknown = await api.req(path, { method, body, key: 'ppsd_admin_zzzzzzzzzzzz_nope' });
      expect(unknown.status, `${method} ${path}`).toBe(401);
      for (const key of [KEY_A, KEY_B]) {
        const res = await api.req(path, { method, body, key });
        expect(res.status, `${method} ${path}`).toBe(403);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe('admin_key_required');
      }
    }
    expect(JSON.stringify(await api.redis.hgetall(keys.apiKeys))).toBe(before);
    expect(await api.redis.xlen(keys.adminAudit)).toBe(0);
  });

  it('an admin key is refused on /v1/', async () => {
    for (const path of ['/v1/models', '/v1/usage', '/v1/jobs/job_x']) {
      expect((await api.req(path, { key: ADMIN_KEY })).status).toBe(401);
    }
    const res = await api.req('/v1/completions', { key: ADMIN_KEY, body: { model: MODEL, prompt: 'Once' } });
    expect(res.status).toBe(401);
  });
});

describe('tenants and keys', () => {
  it('creates a tenant (201, 409 again, 400 for a bad id), issues a key that works, revokes it', async () => {
    const created = await json<{ id: string; active_keys: number }>(
      await admin('/admin/tenants', { body: { id: 'initech' } }),
      201,
    );
    expect(created).toMatchObject({ id: 'initech', active_keys: 0, token_quota: null, job_limit: null });
    expect((await admin('/admin/tenants', { body: { id: 'initech' } })).status).toBe(409);
    expect((await admin('/admin/tenants', { body: { id: 'no spaces' } })).status).toBe(400);
    expect((await admin('/admin/tenants/nobody/keys', { method: 'POST' })).status).toBe(404);

    const issued = await json<{ key: string; prefix: string; tenant: string }>(
      await admin('/admin/tenants/initech/keys', { method: 'POST' }),
      201,
    );
    expect(issued.key.startsWith(`${issued.prefix}_`)).toBe(true);
    expect(issued.tenant).toBe('initech');
    expect((await api.req('/v1/models', { key: issued.key })).status).toBe(200);

    const listed = await json<{ data: { prefix: string; active: boolean; tenant: string }[] }>(
      await admin('/admin/tenants/initech/keys'),
      200,
    );
    expect(listed.data).toEqual([expect.objectContaining({ prefix: issued.prefix, active: true })]);
    expect(JSON.stringify(listed)).not.toContain(
      issued.key.slice(issued.prefix.length + 1, issued.prefix.length + 9),
    );
    const all = await json<{ data: { tenant: string }[] }>(await admin('/admin/keys'), 200);
    expect(new Set(all.data.map((k) => k.tenant))).toEqual(new Set(['acme', 'globex', 'initech']));

    const revoked = await json<{ status: string }>(
      await admin(`/admin/keys/${issued.prefix}`, { method: 'DELETE' }),
      200,
    );
    expect(revoked).toEqual({ prefix: issued.prefix, tenant: 'initech', status: 'revoked' });
    // refused on the very next request (no cache)
    expect((await api.req('/v1/models', { key: issued.key })).status).toBe(401);
    expect(await json(await admin(`/admin/keys/${issued.prefix}`, { method: 'DELETE' }), 200)).toMatchObject({
      status: 'already_revoked',
    });
    expect((await admin('/admin/keys/ppsd_nonexistent00', { method: 'DELETE' })).status).toBe(404);
    const after = await json<{ data: { active: boolean; revokedBy: string }[] }>(
      await admin('/admin/tenants/initech/keys'),
      200,
    );
    expect(after.data[0]).toMatchObject({ active: false, revokedBy: 'ppsd_admin_root00000000' });
  });

  it('a disabled tenant is refused on /v1/ until enabled again', async () => {
    await json(await admin('/admin/tenants/globex', { method: 'PATCH', body: { disabled: true } }), 200);
    expect((await api.req('/v1/models', { key: KEY_B })).status).toBe(401);
    expect((await api.req('/v1/models', { key: KEY_A })).status).toBe(200);
    const listed = await json<{ data: { id: string; disabled?: boolean }[] }>(
      await admin('/admin/tenants'),
      200,
    );
    expect(listed.data.find((t) => t.id === 'globex')?.disabled).toBe(true);
    await json(await admin('/admin/tenants/globex', { method: 'PATCH', body: { disabled: false } }), 200);
    expect((await api.req('/v1/models', { key: KEY_B })).status).toBe(200);
  });

  it('allowed models: unknown ones are 400, a model outside the list is 403 at admission', async () => {
    expect(
      (await admin('/admin/tenants/globex', { method: 'PATCH', body: { models: ['gpt-4'] } })).status,
    ).toBe(400);
    const t = await json<{ models: string[] }>(
      await admin('/admin/tenants/globex', { method: 'PATCH', body: { models: [] } }),
      200,
    );
    expect(t.models).toEqual([]);
    const res = await api.req('/v1/jobs', { key: KEY_B, body: { prompt: 'Once', max_tokens: 2 } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('model_not_allowed');
    await json(await admin('/admin/tenants/globex', { method: 'PATCH', body: { models: [MODEL] } }), 200);
    expect((await api.req('/v1/jobs', { key: KEY_B, body: { prompt: 'Once', max_tokens: 2 } })).status).toBe(
      202,
    );
    await json(await admin('/admin/tenants/globex', { method: 'PATCH', body: { models: null } }), 200);
    await api.queue().obliterate({ force: true });
    await api.redis.del(keys.tenantReservations('globex'), keys.tenantQuota('globex'));
  });

  it('PUT quota {tokens, jobs}: the tenant gets 429 at its own limits; null goes back to the default', async () => {
    const t = await json<{ token_quota: number; job_limit: number; effective: object }>(
      await admin('/admin/tenants/globex/quota', { method: 'PUT', body: { tokens: 0, jobs: 1 } }),
      200,
    );
    expect(t).toMatchObject({ token_quota: 0, job_limit: 1, effective: { token_quota: 0, job_limit: 1 } });
    const job = { prompt: 'Once upon a time', max_tokens: 4 };
    expect((await api.req('/v1/jobs', { key: KEY_B, body: job })).status).toBe(202);
    const limited = await api.req('/v1/jobs', { key: KEY_B, body: job });
    expect(limited.status).toBe(429);
    const err = ((await limited.json()) as { error: { code: string; message: string } }).error;
    expect(err.code).toBe('tenant_queue_limit');
    expect(err.message).toContain('limit 1');
    expect((await api.req('/v1/jobs', { key: KEY_A, body: job })).status).toBe(202); // acme unaffected

    await json(
      await admin('/admin/tenants/globex/quota', { method: 'PUT', body: { tokens: 5, jobs: null } }),
      200,
    );
    const over = await api.req('/v1/jobs', { key: KEY_B, body: job });
    expect(over.status).toBe(429);
    expect(((await over.json()) as { error: { code: string } }).error.code).toBe('quota_exceeded');
    const back = await json<{ job_limit: null; effective: { job_limit: number } }>(
      await admin('/admin/tenants/globex/quota', { method: 'PUT', body: { tokens: null, jobs: null } }),
      200,
    );
    expect(back).toMatchObject({
      token_quota: null,
      job_limit: null,
      effective: { job_limit: 5, token_quota: 0 },
    });
    expect((await admin('/admin/tenants/globex/quota', { method: 'PUT', body: { tokens: -1 } })).status).toBe(
      400,
    );
    expect((await admin('/admin/tenants/nobody/quota', { method: 'PUT', body: { tokens: 1 } })).status).toBe(
      404,
    );
    await api.queue().obliterate({ force: true });
  });
});

const DAY1 = Date.UTC(2025, 2, 1, 10);
const DAY2 = Date.UTC(2025, 2, 2, 23, 59);

const record = (
  tenant: string,
  jobId: string,
  model: string,
  p: number,
  c: number,
  attempt = 1,
): UsageRecord => ({
  tenant,
  jobId,
  attempt,
  model,
  status: 'completed',
  finishReason: 'stop',
  promptTokens: p,
  completionTokens: c,
  draftTokensProposed: 0,
  draftTokensAccepted: 0,
  decoder: 'ar',
  wallMs: 10,
  deviceSeconds: 0.01,
  endedAt: 0,
});

describe('usage export', () => {
  beforeAll(async () => {
    const add = (at: number, seq: number, r: UsageRecord) =>
      api.redis.xadd(keys.tenantUsage(r.tenant), `${at}-${seq}`, ...encodeUsage(r));
    await add(DAY1, 0, record('acme', 'job_a1', MODEL, 5, 10));
    await add(DAY1, 1, record('acme', 'job_a1', MODEL, 5, 3, 2)); // a retried attempt: same job
    await add(DAY1, 2, record('acme', 'job_a2', 'other-model', 7, 1));
    await add(DAY2, 0, record('acme', 'job_a3', MODEL, 2, 2));
    await add(DAY1, 0, record('globex', 'job_g1', MODEL, 100, 200));
  });

  it('CSV: one row per tenant, model and UTC day with prompt_tokens,completion_tokens,jobs', async () => {
    const res = await admin(`/admin/usage?from=${DAY1 - 1000}&to=${DAY2 + 1000}&format=csv`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/csv/);
    expect((await res.text()).split('\r\n')).toEqual([
      'tenant,model,day,prompt_tokens,completion_tokens,jobs',
      'acme,other-model,2025-03-01,7,1,1',
      'acme,stories260K,2025-03-01,10,13,1',
      'acme,stories260K,2025-03-02,2,2,1',
      'globex,stories260K,2025-03-01,100,200,1',
      '',
    ]);
  });

  it('JSON, one tenant, a time range (ISO dates); unknown tenant 404, from after to 400', async () => {
    const r = await json<{ data: UsageRow[]; tenant: string }>(
      await admin('/admin/usage?tenant=acme&from=2025-03-02T00:00:00Z&to=2025-03-03T00:00:00Z'),
      200,
    );
    expect(r.tenant).toBe('acme');
    expect(r.data).toEqual([
      expect.objectContaining({ tenant: 'acme', model: MODEL, day: '2025-03-02', prompt_tokens: 2, jobs: 1 }),
    ]);
    expect((await admin('/admin/usage?tenant=nobody')).status).toBe(404);
    expect((await admin(`/admin/usage?from=${DAY2}&to=${DAY1}`)).status).toBe(400);
    expect((await admin('/admin/usage?format=xml')).status).toBe(400);
  });

  it("a tenant's own /v1/usage never shows another tenant's records", async () => {
    const own = await json<{ data: UsageRecord[] }>(
      await api.req(`/v1/usage?from=${DAY1 - 1}`, { key: KEY_B }),
      200,
    );
    expect(own.data.map((r) => r.tenant)).toEqual(['globex']);
  });
});

describe('audit log', () => {
  it('records who did what and when, newest first; GETs are not recorded', async () => {
    const t0 = Date.now();
    await json(await admin('/admin/tenants', { body: { id: 'audited' } }), 201);
    const { prefix } = await json<{ prefix: string }>(
      await admin('/admin/tenants/audited/keys', { method: 'POST' }),
      201,
    );
    await json(await admin(`/admin/keys/${prefix}`, { method: 'DELETE' }), 200);
    await admin('/admin/tenants', { body: { id: 'audited' } }); // 409: recorded too
    const { data } = await json<{ data: AuditEntry[] }>(await admin(`/admin/audit?from=${t0}`), 200);
    expect(data.map((e) => [e.action, e.target, e.status])).toEqual([
      ['tenant.create', 'audited', 409],
      ['key.revoke', prefix, 200],
      ['key.issue', prefix, 201],
      ['tenant.create', 'audited', 201],
    ]);
    for (const e of data) {
      expect(e.actor).toBe('ppsd_admin_root00000000');
      expect(e.at).toBeGreaterThanOrEqual(t0);
    }
    expect(data[2].detail).toEqual({ tenant: 'audited' });
    expect(JSON.stringify(data)).not.toMatch(/ppsd_[a-z0-9]{12}_/); // never a key
  });
});

describe('admin keys and stats', () => {
  it('issues admin keys, revokes them, never the last active one', async () => {
    const issued = await json<{ key: string; prefix: string }>(
      await admin('/admin/admin-keys', { method: 'POST' }),
      201,
    );
    expect(issued.prefix).toMatch(/^ppsd_admin_/);
    expect((await api.req('/admin/tenants', { key: issued.key })).status).toBe(200);
    expect((await api.req('/v1/models', { key: issued.key })).status).toBe(401);
    await json(await admin(`/admin/admin-keys/${issued.prefix}`, { method: 'DELETE' }), 200);
    expect((await api.req('/admin/tenants', { key: issued.key })).status).toBe(401);
    const last = await admin('/admin/admin-keys/ppsd_admin_root00000000', { method: 'DELETE' });
    expect(last.status).toBe(409);
    expect((await admin('/admin/tenants')).status).toBe(200);
  });

  it('stats: queue depth, fresh workers with their device plans, worker counters', async () => {
    await api.redis.hset(
      keys.workers(MODEL),
      'w1',
      JSON.stringify({
        workerId: 'w1',
        modelId: MODEL,
        ready: true,
        decoders: ['ar', 'ppsd'],
        devices: ['cuda:0', 'cuda:1'],
        busy: 1,
        at: Date.now(),
        scheduler: { running: 3, waiting: 2, maxBatch: 16, kvUsedBytes: 1024, kvBudgetBytes: 4096 },
      }),
      'old',
      JSON.stringify({
        workerId: 'old',
        modelId: MODEL,
        ready: true,
        decoders: [],
        devices: [],
        busy: 0,
        at: 1,
      }),
    );
    await api.redis.hset(
      keys.metrics(MODEL),
      'generation_tokens_total',
      42,
      'spec_decode_num_accepted_tokens_total',
      7,
    );
    await api.req('/v1/jobs', { key: KEY_A, body: { prompt: 'Once', max_tokens: 2 } });
    const s = await json<{
      models: {
        model: string;
        queue: { waiting: number };
        workers: { workerId: string; devices: string[]; scheduler: unknown }[];
        counters: Record<string, number>;
      }[];
    }>(await admin('/admin/stats'), 200);
    expect(s.models).toHaveLength(1);
    expect(s.models[0].queue.waiting).toBe(1);
    expect(s.models[0].workers.map((w) => [w.workerId, w.devices])).toEqual([['w1', ['cuda:0', 'cuda:1']]]);
    // the engine's batch as the worker's heartbeat reported it
    expect(s.models[0].workers[0].scheduler).toEqual({
      running: 3,
      waiting: 2,
      max_batch: 16,
      kv_used_bytes: 1024,
      kv_budget_bytes: 4096,
    });
    expect(s.models[0].counters).toMatchObject({
      generation_tokens_total: 42,
      spec_decode_num_accepted_tokens_total: 7,
    });
    await api.queue().obliterate({ force: true });
  });

  it('the OpenAPI document covers the admin API with the admin security scheme', async () => {
    const doc = (await (await api.req('/openapi.json', { key: null })).json()) as {
      paths: Record<string, Record<string, { security?: unknown[]; tags?: string[] }>>;
      components: { securitySchemes: Record<string, unknown> };
    };
    expect(doc.components.securitySchemes.adminAuth).toMatchObject({ type: 'http', scheme: 'bearer' });
    for (const [method, path] of ADMIN_ROUTES) {
      const p = path.replace('/acme', '/{id}').replace(/keys\/ppsd_\w+$/, 'keys/{prefix}');
      const op = doc.paths[p]?.[method.toLowerCase()];
      expect(op, `${method} ${p}`).toBeDefined();
      expect(op!.security).toEqual([{ adminAuth: [] }]);
    }
  });
});
