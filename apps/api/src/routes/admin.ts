/**
 * The admin API under /admin/ (admin keys only; a tenant key is 403, an admin key is never valid on /v1/):
 * tenants (create, list, disable, allowed models), their keys (issue once, list by prefix, revoke), limits
 * (token quota, job limit), the usage export (JSON or CSV per tenant, model and day), the audit log and
 * the live state of the queues and workers. Every request that changes something is audited.
 */
import { createRoute, z } from '@hono/zod-openapi';
import {
  keys,
  type StatsResponse,
  type TenantRecord,
  type TenantView,
  WORKER_STALE_MS,
  type WorkerHeartbeat,
} from '@ppsd/contract';
import type { MiddlewareHandler } from 'hono';
import { TENANT_ID } from '../adapters/tenants';
import type { AppContext, AppEnv } from '../context';
import { router } from '../context';
import { ApiError, forbidden, invalid, notFound, unauthorized } from '../errors';
import { errorResponses } from '../schemas';
import { readUsage, usageCsv, usageRows } from '../usage-report';
import { parseTime } from './usage';

const security = [{ adminAuth: [] }];
const tags = ['Admin'];

// ---- schemas ----

const Limit = z.number().int().min(0).nullable();

const TenantSchema = z
  .object({
    id: z.string(),
    createdAt: z.number().int(),
    disabled: z.boolean().optional(),
    models: z.array(z.string()).optional().openapi({ description: 'Allowed models; absent = all' }),
    active_keys: z.number().int(),
    token_quota: Limit.openapi({ description: 'Own token quota per period; null = server default' }),
    job_limit: Limit.openapi({ description: 'Own unfinished-job limit; null = server default' }),
    effective: z.object({ token_quota: z.number().int(), job_limit: z.number().int() }),
    used_tokens: z.number(),
    reserved_tokens: z.number(),
    unfinished_jobs: z.number().int(),
  })
  .openapi('Tenant');

const KeySchema = z
  .object({
    prefix: z.string(),
    tenant: z.string(),
    createdAt: z.number().int(),
    source: z.enum(['config', 'issued']),
    createdBy: z.string().optional(),
    revokedAt: z.number().int().optional(),
    revokedBy: z.string().optional(),
    active: z.boolean(),
  })
  .openapi('ApiKey');

const IssuedKey = z
  .object({
    key: z.string().openapi({ description: 'The key: shown only in this response' }),
    prefix: z.string(),
    tenant: z.string(),
    createdAt: z.number().int(),
  })
  .openapi('IssuedKey');

const Revoked = z
  .object({ prefix: z.string(), tenant: z.string(), status: z.enum(['revoked', 'already_revoked']) })
  .openapi('RevokedKey');

const AuditSchema = z
  .object({
    id: z.string(),
    at: z.number().int(),
    actor: z.string().openapi({ description: 'Prefix of the admin key that acted' }),
    action: z.string(),
    method: z.string(),
    path: z.string(),
    target: z.string().optional(),
    status: z.number().int(),
    detail: z.record(z.string(), z.unknown()).optional(),
  })
  .openapi('AuditEntry');

const UsageRowSchema = z
  .object({
    tenant: z.string(),
    model: z.string(),
    day: z.string(),
    prompt_tokens: z.number(),
    completion_tokens: z.number(),
    total_tokens: z.number(),
    jobs: z.number().int(),
    draft_tokens_proposed: z.number(),
    draft_tokens_accepted: z.number(),
    device_seconds: z.number(),
  })
  .openapi('UsageRow');

const UsageReportSchema = z
  .object({
    object: z.literal('usage_report'),
    from: z.number().int(),
    to: z.number().int(),
    tenant: z.string().nullable(),
    data: z.array(UsageRowSchema),
  })
  .openapi('UsageReport');

const StatsSchema = z
  .object({
    object: z.literal('stats'),
    at: z.number().int(),
    models: z.array(
      z.object({
        model: z.string(),
        queue: z.object({
          waiting: z.number().int(),
          active: z.number().int(),
          delayed: z.number().int(),
          failed: z.number().int(),
          completed: z.number().int(),
        }),
        workers: z.array(
          z.object({
            workerId: z.string(),
            ready: z.boolean(),
            devices: z.array(z.string()),
            decoders: z.array(z.string()),
            busy: z.number().int(),
            age_ms: z.number().int(),
            /** The engine's batch at the last beat: sequences running / waiting, batch size, KV pool use. */
            scheduler: z
              .object({
                running: z.number().int(),
                waiting: z.number().int(),
                max_batch: z.number().int(),
                kv_used_bytes: z.number(),
                kv_budget_bytes: z.number(),
              })
              .nullable(),
          }),
        ),
        counters: z.record(z.string(), z.number()),
      }),
    ),
  })
  .openapi('Stats');

const list = <T extends z.ZodTypeAny>(item: T) =>
  z.object({ object: z.literal('list'), data: z.array(item) });
const TenantIdParam = z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) });
const PrefixParam = z.object({ prefix: z.string().openapi({ param: { name: 'prefix', in: 'path' } }) });
const json = <T extends z.ZodTypeAny>(schema: T, description: string) => ({
  description,
  content: { 'application/json': { schema } },
});
const body = <T extends z.ZodTypeAny>(schema: T) => ({
  required: true,
  content: { 'application/json': { schema } },
});

const ModelIds = z.array(z.string().min(1)).max(256);

// ---- routes ----

const listTenants = createRoute({
  method: 'get',
  path: '/admin/tenants',
  tags,
  security,
  summary: 'All tenants with their limits and current use',
  responses: { 200: json(list(TenantSchema), 'Tenants'), ...errorResponses(401, 403) },
});

const createTenant = createRoute({
  method: 'post',
  path: '/admin/tenants',
  tags,
  security,
  summary: 'Create a tenant (then issue it a key)',
  request: {
    body: body(
      z.object({
        id: z.string().regex(TENANT_ID, 'letters, digits, ".", "_" or "-", at most 64'),
        models: ModelIds.optional(),
        token_quota: Limit.optional(),
        job_limit: Limit.optional(),
      }),
    ),
  },
  responses: { 201: json(TenantSchema, 'Created'), ...errorResponses(400, 401, 403, 409) },
});

const getTenant = createRoute({
  method: 'get',
  path: '/admin/tenants/{id}',
  tags,
  security,
  summary: 'One tenant',
  request: { params: TenantIdParam },
  responses: { 200: json(TenantSchema, 'The tenant'), ...errorResponses(401, 403, 404) },
});

const patchTenant = createRoute({
  method: 'patch',
  path: '/admin/tenants/{id}',
  tags,
  security,
  summary: 'Disable or enable a tenant, or set its allowed models (null: every model)',
  request: {
    params: TenantIdParam,
    body: body(z.object({ disabled: z.boolean().optional(), models: ModelIds.nullable().optional() })),
  },
  responses: { 200: json(TenantSchema, 'The tenant'), ...errorResponses(400, 401, 403, 404) },
});

const putQuota = createRoute({
  method: 'put',
  path: '/admin/tenants/{id}/quota',
  tags,
  security,
  summary: "Set a tenant's token quota per period and unfinished-job limit (0 = unlimited, null = default)",
  request: {
    params: TenantIdParam,
    body: body(z.object({ tokens: Limit.optional(), jobs: Limit.optional() })),
  },
  responses: { 200: json(TenantSchema, 'The tenant'), ...errorResponses(400, 401, 403, 404) },
});

const issueKey = createRoute({
  method: 'post',
  path: '/admin/tenants/{id}/keys',
  tags,
  security,
  summary: 'Issue a key for a tenant (the key is in this response only)',
  request: { params: TenantIdParam },
  responses: { 201: json(IssuedKey, 'The new key'), ...errorResponses(401, 403, 404) },
});

const tenantKeys = createRoute({
  method: 'get',
  path: '/admin/tenants/{id}/keys',
  tags,
  security,
  summary: "A tenant's keys, by prefix",
  request: { params: TenantIdParam },
  responses: { 200: json(list(KeySchema), 'Keys'), ...errorResponses(401, 403, 404) },
});

const allKeys = createRoute({
  method: 'get',
  path: '/admin/keys',
  tags,
  security,
  summary: "Every tenant key (or one tenant's), by prefix",
  request: { query: z.object({ tenant: z.string().optional() }) },
  responses: { 200: json(list(KeySchema), 'Keys'), ...errorResponses(401, 403) },
});

const revokeKey = createRoute({
  method: 'delete',
  path: '/admin/keys/{prefix}',
  tags,
  security,
  summary: 'Revoke a tenant key: refused from the next request on',
  request: { params: PrefixParam },
  responses: { 200: json(Revoked, 'Revoked'), ...errorResponses(401, 403, 404) },
});

const usage = createRoute({
  method: 'get',
  path: '/admin/usage',
  tags,
  security,
  summary: 'Usage per tenant, model and UTC day in [from, to]: the billing export (JSON or CSV)',
  request: {
    query: z.object({
      from: z.string().optional().openapi({ description: 'ISO 8601 or ms; default 0' }),
      to: z.string().optional().openapi({ description: 'ISO 8601 or ms; default now' }),
      tenant: z.string().optional().openapi({ description: 'One tenant; default all' }),
      format: z.enum(['json', 'csv']).optional(),
    }),
  },
  responses: {
    200: {
      description: 'Rows; CSV columns tenant,model,day,prompt_tokens,completion_tokens,jobs',
      content: { 'application/json': { schema: UsageReportSchema }, 'text/csv': { schema: z.string() } },
    },
    ...errorResponses(400, 401, 403, 404),
  },
});

const audit = createRoute({
  method: 'get',
  path: '/admin/audit',
  tags,
  security,
  summary: 'Admin actions (who, what, when), newest first',
  request: {
    query: z.object({
      from: z.string().optional(),
      to: z.string().optional(),
      limit: z.coerce.number().int().min(1).max(1000).optional(),
    }),
  },
  responses: { 200: json(list(AuditSchema), 'Entries'), ...errorResponses(400, 401, 403) },
});

const stats = createRoute({
  method: 'get',
  path: '/admin/stats',
  tags,
  security,
  summary: 'Live queue depth, workers (device plans, decoders) and worker counters per model',
  responses: { 200: json(StatsSchema, 'Stats'), ...errorResponses(401, 403) },
});

const listAdminKeys = createRoute({
  method: 'get',
  path: '/admin/admin-keys',
  tags,
  security,
  summary: 'Admin keys, by prefix',
  responses: { 200: json(list(KeySchema), 'Admin keys'), ...errorResponses(401, 403) },
});

const issueAdminKey = createRoute({
  method: 'post',
  path: '/admin/admin-keys',
  tags,
  security,
  summary: 'Issue another admin key (the key is in this response only)',
  responses: { 201: json(IssuedKey, 'The new admin key'), ...errorResponses(401, 403) },
});

const revokeAdminKey = createRoute({
  method: 'delete',
  path: '/admin/admin-keys/{prefix}',
  tags,
  security,
  summary: 'Revoke an admin key (never the last active one)',
  request: { params: PrefixParam },
  responses: { 200: json(Revoked, 'Revoked'), ...errorResponses(401, 403, 404, 409) },
});

// ---- middleware ----

const bearer = (header: string | undefined) =>
  header ? /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1] : undefined;

/** Admin key required; every authenticated request that is not a GET gets an audit entry. */
export function adminAuth(ctx: AppContext): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const key = bearer(c.req.header('Authorization'));
    if (!key)
      throw unauthorized(
        'The admin API needs an admin key: "Authorization: Bearer ADMIN_KEY".',
        'missing_api_key',
      );
    const admin = await ctx.adminKeys.authenticate(key);
    if (!admin) {
      if (await ctx.tenants.authenticate(key))
        throw forbidden('This is a tenant API key; the admin API needs an admin key.', 'admin_key_required');
      throw unauthorized('Incorrect or revoked admin key provided.');
    }
    c.set('admin', admin);
    c.set('log', c.get('log').child({ admin }));
    await next();
    if (c.req.method === 'GET') return;
    const a = c.get('audit');
    await ctx.audit.record({
      at: ctx.clock(),
      actor: admin,
      action: a?.action ?? `${c.req.method} ${c.req.routePath}`,
      method: c.req.method,
      path: c.req.path,
      ...(a?.target ? { target: a.target } : {}),
      status: c.res.status,
      ...(a?.detail ? { detail: a.detail } : c.error ? { detail: { error: c.error.message } } : {}),
    });
  };
}

// ---- handlers ----

export function adminRoutes(ctx: AppContext) {
  const app = router();
  app.use('/admin/*', adminAuth(ctx));

  const tenantOr404 = async (id: string): Promise<TenantRecord> => {
    const t = await ctx.tenants.getTenant(id);
    if (!t) throw notFound(`No tenant '${id}'.`, 'tenant_not_found', 'id');
    return t;
  };

  const tenantView = async (t: TenantRecord): Promise<TenantView> => {
    const [q, keyList] = await Promise.all([ctx.quota.state(t.id), ctx.tenants.keys.list(t.id)]);
    return {
      ...t,
      active_keys: keyList.filter((k) => k.active).length,
      token_quota: q.own.tokens,
      job_limit: q.own.jobs,
      effective: { token_quota: q.limit, job_limit: q.maxJobs },
      used_tokens: q.used,
      reserved_tokens: q.reserved,
      unfinished_jobs: q.unfinishedJobs,
    };
  };

  const checkModels = (models: string[] | null | undefined) => {
    const unknown = (models ?? []).filter((m) => !ctx.models.get(m));
    if (unknown.length) throw invalid(`Unknown model(s): ${unknown.join(', ')}`, 'models', 'model_not_found');
  };

  const revokeWith = async (
    c: Parameters<MiddlewareHandler<AppEnv>>[0],
    ring: AppContext['adminKeys'] | AppContext['tenants']['keys'],
    prefix: string,
    action: string,
  ) => {
    const rec = await ring.get(prefix);
    if (!rec) throw notFound(`No key with prefix '${prefix}'.`, 'key_not_found', 'prefix');
    const status = await ring.revoke(prefix, c.get('admin'), ctx.clock());
    if (status === 'not_found') throw notFound(`No key with prefix '${prefix}'.`, 'key_not_found', 'prefix');
    c.set('audit', { action, target: prefix, detail: { tenant: rec.tenant, status } });
    return { prefix, tenant: rec.tenant, status };
  };

  return app
    .openapi(listTenants, async (c) => {
      const all = await ctx.tenants.listTenants();
      return c.json({ object: 'list' as const, data: await Promise.all(all.map(tenantView)) }, 200);
    })
    .openapi(createTenant, async (c) => {
      const b = c.req.valid('json');
      checkModels(b.models);
      c.set('audit', { action: 'tenant.create', target: b.id, detail: { ...b } });
      const { created } = await ctx.tenants.createTenant(b.id, ctx.clock());
      if (!created)
        throw new ApiError(
          409,
          `Tenant '${b.id}' already exists.`,
          'invalid_request_error',
          'tenant_exists',
          'id',
        );
      const rec = b.models ? await ctx.tenants.updateTenant(b.id, { models: b.models }) : undefined;
      if (b.token_quota !== undefined || b.job_limit !== undefined)
        await ctx.quota.setLimits(b.id, { tokens: b.token_quota, jobs: b.job_limit });
      return c.json(await tenantView(rec ?? (await tenantOr404(b.id))), 201);
    })
    .openapi(getTenant, async (c) =>
      c.json(await tenantView(await tenantOr404(c.req.valid('param').id)), 200),
    )
    .openapi(patchTenant, async (c) => {
      const { id } = c.req.valid('param');
      const b = c.req.valid('json');
      checkModels(b.models);
      const action =
        b.disabled === true ? 'tenant.disable' : b.disabled === false ? 'tenant.enable' : 'tenant.update';
      c.set('audit', { action, target: id, detail: { ...b } });
      const rec = await ctx.tenants.updateTenant(id, b);
      if (!rec) throw notFound(`No tenant '${id}'.`, 'tenant_not_found', 'id');
      return c.json(await tenantView(rec), 200);
    })
    .openapi(putQuota, async (c) => {
      const { id } = c.req.valid('param');
      const b = c.req.valid('json');
      c.set('audit', { action: 'tenant.quota', target: id, detail: { ...b } });
      const rec = await tenantOr404(id);
      await ctx.quota.setLimits(id, b);
      return c.json(await tenantView(rec), 200);
    })
    .openapi(issueKey, async (c) => {
      const { id } = c.req.valid('param');
      c.set('audit', { action: 'key.issue', target: id });
      await tenantOr404(id);
      const now = ctx.clock();
      const { key, prefix } = await ctx.tenants.issueKey(id, c.get('admin'), now);
      c.set('audit', { action: 'key.issue', target: prefix, detail: { tenant: id } });
      return c.json({ key, prefix, tenant: id, createdAt: now }, 201);
    })
    .openapi(tenantKeys, async (c) => {
      const { id } = c.req.valid('param');
      await tenantOr404(id);
      return c.json({ object: 'list' as const, data: await ctx.tenants.keys.list(id) }, 200);
    })
    .openapi(allKeys, async (c) =>
      c.json(
        { object: 'list' as const, data: await ctx.tenants.keys.list(c.req.valid('query').tenant) },
        200,
      ),
    )
    .openapi(revokeKey, async (c) =>
      c.json(await revokeWith(c, ctx.tenants.keys, c.req.valid('param').prefix, 'key.revoke'), 200),
    )
    .openapi(usage, async (c) => {
      const q = c.req.valid('query');
      const to = parseTime(q.to, 'to', ctx.clock());
      const from = parseTime(q.from, 'from', 0);
      if (from > to) throw invalid('from must not be after to', 'from');
      if (q.tenant !== undefined) await tenantOr404(q.tenant);
      const tenants =
        q.tenant !== undefined ? [q.tenant] : (await ctx.tenants.listTenants()).map((t) => t.id);
      const records = (await Promise.all(tenants.map((t) => readUsage(ctx.redis, t, from, to)))).flat();
      const data = usageRows(records);
      if (q.format === 'csv') {
        return c.body(usageCsv(data), 200, {
          'Content-Type': 'text/csv; charset=utf-8',
          'Content-Disposition': `attachment; filename="ppsd-usage-${from}-${to}.csv"`,
        });
      }
      return c.json({ object: 'usage_report' as const, from, to, tenant: q.tenant ?? null, data }, 200);
    })
    .openapi(audit, async (c) => {
      const q = c.req.valid('query');
      const to = parseTime(q.to, 'to', ctx.clock());
      const from = parseTime(q.from, 'from', 0);
      const data = await ctx.audit.list({ from, to, limit: q.limit ?? 100 });
      return c.json({ object: 'list' as const, data }, 200);
    })
    .openapi(stats, async (c) => {
      const now = ctx.clock();
      const models = await Promise.all(
        ctx.models.list().map(async (m) => {
          const [counts, beats, counters] = await Promise.all([
            ctx
              .queues(m.id)
              .getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'failed', 'completed'),
            ctx.redis.hgetall(keys.workers(m.id)),
            ctx.redis.hgetall(keys.metrics(m.id)),
          ]);
          const workers = Object.values(beats)
            .flatMap((v) => {
              try {
                return [JSON.parse(v) as WorkerHeartbeat];
              } catch {
                return [];
              }
            })
            .filter((h) => now - h.at <= WORKER_STALE_MS)
            .map((h) => ({
              workerId: h.workerId,
              ready: h.ready,
              devices: h.devices,
              decoders: h.decoders,
              busy: h.busy,
              age_ms: Math.max(0, now - h.at),
              scheduler: h.scheduler
                ? {
                    running: h.scheduler.running,
                    waiting: h.scheduler.waiting,
                    max_batch: h.scheduler.maxBatch,
                    kv_used_bytes: h.scheduler.kvUsedBytes,
                    kv_budget_bytes: h.scheduler.kvBudgetBytes,
                  }
                : null,
            }));
          return {
            model: m.id,
            queue: {
              waiting: (counts.waiting ?? 0) + (counts.prioritized ?? 0),
              active: counts.active ?? 0,
              delayed: counts.delayed ?? 0,
              failed: counts.failed ?? 0,
              completed: counts.completed ?? 0,
            },
            workers,
            counters: Object.fromEntries(Object.entries(counters).map(([k, v]) => [k, Number(v)])),
          };
        }),
      );
      const body: StatsResponse = { object: 'stats', at: now, models };
      return c.json(body, 200);
    })
    .openapi(listAdminKeys, async (c) =>
      c.json({ object: 'list' as const, data: await ctx.adminKeys.list() }, 200),
    )
    .openapi(issueAdminKey, async (c) => {
      const now = ctx.clock();
      const { key, prefix } = await ctx.adminKeys.issue({ createdBy: c.get('admin'), now });
      c.set('audit', { action: 'admin_key.issue', target: prefix });
      return c.json({ key, prefix, tenant: '', createdAt: now }, 201);
    })
    .openapi(revokeAdminKey, async (c) => {
      const { prefix } = c.req.valid('param');
      const rec = await ctx.adminKeys.get(prefix);
      if (rec && !rec.revokedAt && (await ctx.adminKeys.countActive()) <= 1) {
        c.set('audit', {
          action: 'admin_key.revoke',
          target: prefix,
          detail: { refused: 'last active admin key' },
        });
        throw new ApiError(
          409,
          'Refusing to revoke the last active admin key.',
          'invalid_request_error',
          'last_admin_key',
          'prefix',
        );
      }
      return c.json(await revokeWith(c, ctx.adminKeys, prefix, 'admin_key.revoke'), 200);
    });
}
