/**
 * GET /healthz (the process answers), GET /readyz (Redis answers PING and every served model has at
 * least one fresh, ready worker heartbeat), GET /metrics (Prometheus text). No auth on these.
 */

import { createRoute, z } from '@hono/zod-openapi';
import { keys, WORKER_STALE_MS, type WorkerHeartbeat } from '@ppsd/contract';
import type { AppContext } from '../context';
import { router } from '../context';
import { withTimeout } from '../errors';

const Ready = z
  .object({
    status: z.enum(['ready', 'not_ready']),
    redis: z.boolean(),
    models: z.record(z.string(), z.object({ ready_workers: z.number().int(), workers: z.number().int() })),
  })
  .openapi('Readiness');

export const healthzRoute = createRoute({
  method: 'get',
  path: '/healthz',
  tags: ['Operations'],
  summary: 'Liveness',
  responses: {
    200: {
      description: 'Alive',
      content: { 'application/json': { schema: z.object({ status: z.literal('ok') }) } },
    },
  },
});

export const readyzRoute = createRoute({
  method: 'get',
  path: '/readyz',
  tags: ['Operations'],
  summary: 'Readiness: Redis reachable and a ready worker for every served model',
  responses: {
    200: { description: 'Ready', content: { 'application/json': { schema: Ready } } },
    503: { description: 'Not ready', content: { 'application/json': { schema: Ready } } },
  },
});

export const metricsRoute = createRoute({
  method: 'get',
  path: '/metrics',
  tags: ['Operations'],
  summary: 'Prometheus metrics',
  responses: {
    200: { description: 'Prometheus text format', content: { 'text/plain': { schema: z.string() } } },
  },
});

export function healthRoutes(ctx: AppContext) {
  return router()
    .openapi(healthzRoute, (c) => c.json({ status: 'ok' as const }, 200))
    .openapi(readyzRoute, async (c) => {
      const now = ctx.clock();
      let redis = false;
      const models: Record<string, { ready_workers: number; workers: number }> = {};
      try {
        redis = (await withTimeout(ctx.redis.ping(), ctx.config.redisTimeoutMs, 'ping')) === 'PONG';
        for (const m of ctx.models.list()) {
          const all = Object.values(await ctx.redis.hgetall(keys.workers(m.id))).flatMap((v) => {
            try {
              return [JSON.parse(v) as WorkerHeartbeat];
            } catch {
              return [];
            }
          });
          const fresh = all.filter((h) => now - h.at <= WORKER_STALE_MS);
          models[m.id] = { ready_workers: fresh.filter((h) => h.ready).length, workers: fresh.length };
        }
      } catch {
        redis = false;
      }
      const ids = ctx.models.list().map((m) => m.id);
      const ready = redis && ids.length > 0 && ids.every((id) => (models[id]?.ready_workers ?? 0) > 0);
      const body = { status: ready ? ('ready' as const) : ('not_ready' as const), redis, models };
      return ready ? c.json(body, 200) : c.json(body, 503);
    })
    .openapi(metricsRoute, async (c) => {
      const text = await ctx.metrics.render(ctx.redis);
      return c.text(text, 200, { 'Content-Type': ctx.metrics.contentType });
    });
}
