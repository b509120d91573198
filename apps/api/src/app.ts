/**
 * The one place the API is put together: adapters built from the injected connections, middleware
 * (request id + request logger + access line, metrics, auth, OpenAI-shaped errors) and the route modules.
 * Node server and Lambda handler both serve the app this returns.
 */
import { randomUUID } from 'node:crypto';
import { OpenAPIHono } from '@hono/zod-openapi';
import { createLogger, type Logger } from '@ppsd/contract/log';
import type { Queue } from 'bullmq';
import { HTTPException } from 'hono/http-exception';
import type { Redis } from 'ioredis';
import type { Registry } from 'prom-client';
import { createAuditLog } from './adapters/audit';
import { createQuota } from './adapters/quota';
import { createJobEvents, type JobEvents } from './adapters/redis-events';
import { createAdminKeyStore, createTenantStore } from './adapters/tenants';
import { requestBody } from './body';
import type { ApiConfig } from './config';
import type { AppContext, AppEnv } from './context';
import { ApiError, isRedisUnavailable, unauthorized, unavailable } from './errors';
import { createJobService } from './jobs';
import { createMetrics } from './metrics';
import type { ModelRegistry } from './models';
import { adminRoutes } from './routes/admin';
import { chatRoutes } from './routes/chat';
import { completionsRoutes } from './routes/completions';
import { consoleRoutes } from './routes/console';
import { healthRoutes } from './routes/health';
import { jobsRoutes } from './routes/jobs';
import { modelsRoutes } from './routes/models';
import { summarizeRoutes } from './routes/summarize';
import { usageRoutes } from './routes/usage';

export interface AppDeps {
  /** Command connection; request-path calls must fail fast (small maxRetriesPerRequest, no offline queue). */
  redis: Redis;
  /** Dedicated connection for pub/sub wake-ups (one per process, whatever the number of streams). */
  subscriber: Redis;
  /** The BullMQ queue of a model (queueName(model), prefix QUEUE_PREFIX); the caller caches them. */
  queues: (model: string) => Queue;
  models: ModelRegistry;
  config: ApiConfig;
  metrics: Registry;
  clock?: () => number;
  /** The service logger (default: createLogger({service: 'api'}), JSON lines on stdout). */
  log?: Logger;
}

/** An incoming `x-request-id` is kept when it is a short token like these; anything else gets a UUID. */
export const REQUEST_ID = /^[A-Za-z0-9][A-Za-z0-9._:=-]{0,127}$/;
/** Probes and scrapes: their access lines are debug, not info (a load balancer asks every few seconds). */
const PROBES = new Set(['/healthz', '/readyz', '/metrics']);

export interface PpsdApp extends OpenAPIHono<AppEnv> {
  /** Releases what createApp set up (pub/sub listeners); the caller closes the connections. */
  dispose(): void;
  ctx: AppContext;
}

export const OPENAPI_INFO = {
  openapi: '3.1.0',
  info: {
    title: 'ppsd API',
    version: '0.1.0',
    description:
      'OpenAI-compatible completions, chat and models; summarization; background jobs with resumable SSE; usage.',
  },
};

export function createApp(deps: AppDeps): PpsdApp {
  const clock = deps.clock ?? Date.now;
  const { redis, config } = deps;
  const log = deps.log ?? createLogger({ service: 'api' });
  const events: JobEvents = createJobEvents(redis, deps.subscriber, { pollMs: config.pollMs });
  const quota = createQuota(redis, config);
  const tenants = createTenantStore(redis, config.keySecret);
  const adminKeys = createAdminKeyStore(redis, config.keySecret);
  const audit = createAuditLog(redis);
  const metrics = createMetrics(deps.metrics, { queues: deps.queues, models: deps.models });
  const jobs = createJobService({
    redis,
    queues: deps.queues,
    models: deps.models,
    config,
    events,
    quota,
    clock,
    allowedModels: async (tenant) => (await tenants.getTenant(tenant))?.models,
  });
  const ctx: AppContext = {
    redis,
    queues: deps.queues,
    models: deps.models,
    config,
    events,
    quota,
    tenants,
    adminKeys,
    audit,
    jobs,
    metrics,
    clock,
    log,
  };

  const app = new OpenAPIHono<AppEnv>();

  // Request id (kept from x-request-id when sane, echoed), the request's logger, one access line.
  app.use('*', async (c, next) => {
    const started = performance.now();
    const incoming = c.req.header('X-Request-Id');
    const reqId = incoming && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    c.set('requestId', reqId);
    c.set('log', log.child({ reqId }));
    await next();
    // after the handler: also on Responses a route built itself (answers relayed from a job, SSE)
    c.header('X-Request-Id', reqId);
    const status = c.res.status;
    const line = {
      method: c.req.method,
      path: c.req.path,
      status,
      ms: Math.round((performance.now() - started) * 10) / 10,
      ...(c.get('errorCode') ? { code: c.get('errorCode') } : {}),
    };
    const level = status >= 500 ? 'warn' : PROBES.has(c.req.path) ? 'debug' : 'info';
    c.get('log')[level](line, 'request');
  });

  app.use('*', async (c, next) => {
    const started = performance.now();
    await next();
    const route = c.req.routePath || 'unmatched';
    metrics.http.inc({ method: c.req.method, route, status: String(c.res.status) });
    metrics.httpTime.observe({ method: c.req.method, route }, (performance.now() - started) / 1000);
  });

  app.use('/v1/*', async (c, next) => {
    const header = c.req.header('Authorization');
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) {
      throw unauthorized(
        'You didn\'t provide an API key. Send it in the Authorization header as "Bearer YOUR_KEY".',
        'missing_api_key',
      );
    }
    const tenant = await tenants.authenticate(m[1]);
    if (!tenant) throw unauthorized('Incorrect or revoked API key provided.');
    c.set('tenant', tenant.id);
    c.set('log', c.get('log').child({ tenant: tenant.id }));
    await next();
  });

  // After auth: an unauthenticated client cannot make the API read a body.
  app.use('*', requestBody(config.maxBodyBytes));

  app.onError((err, c) => {
    let e: ApiError;
    if (err instanceof ApiError) e = err;
    else if (err instanceof HTTPException) {
      const status = err.status;
      e = new ApiError(
        status as ApiError['status'],
        err.message || 'Invalid request',
        status === 401 ? 'authentication_error' : status >= 500 ? 'server_error' : 'invalid_request_error',
        status === 400 ? 'invalid_request' : null,
      );
    } else if (isRedisUnavailable(err)) {
      e = unavailable('The service cannot reach its data store; retry later.');
      (c.get('log') ?? log).warn({ error: err.message }, 'data store unavailable');
    } else {
      (c.get('log') ?? log).error({ err, method: c.req.method, path: c.req.path }, 'unhandled error');
      e = new ApiError(500, 'Internal server error', 'server_error', 'internal_error');
    }
    if (e.code) c.set('errorCode', e.code);
    return c.json(e.body(), e.status, e.headers);
  });

  app.notFound((c) =>
    c.json(
      new ApiError(
        404,
        `Unknown endpoint ${c.req.method} ${c.req.path}`,
        'not_found_error',
        'unknown_url',
      ).body(),
      404,
    ),
  );

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearerAuth', {
    type: 'http',
    scheme: 'bearer',
    description: 'API key of a tenant',
  });
  app.openAPIRegistry.registerComponent('securitySchemes', 'adminAuth', {
    type: 'http',
    scheme: 'bearer',
    description: 'Admin key (PPSD_ADMIN_KEYS, or printed once on first start); never valid on /v1/',
  });

  app
    .route('/', healthRoutes(ctx))
    .route('/', modelsRoutes(ctx))
    .route('/', completionsRoutes(ctx))
    .route('/', chatRoutes(ctx))
    .route('/', summarizeRoutes(ctx))
    .route('/', jobsRoutes(ctx))
    .route('/', usageRoutes(ctx))
    .route('/', adminRoutes(ctx))
    .route('/', consoleRoutes());

  app.doc31('/openapi.json', OPENAPI_INFO);

  return Object.assign(app, {
    ctx,
    dispose: () => events.close(),
  });
}
