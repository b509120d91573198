/** GET /v1/usage: the calling tenant's usage records (one per job attempt), per-job sums and totals. */

import { createRoute, z } from '@hono/zod-openapi';
import { decodeUsage, keys, sumUsage, type UsageRecord } from '@ppsd/contract';
import type { AppContext } from '../context';
import { router } from '../context';
import { invalid } from '../errors';
import { errorResponses, Time, UsageResponse } from '../schemas';

export const usageRoute = createRoute({
  method: 'get',
  path: '/v1/usage',
  tags: ['Usage'],
  summary: "The calling tenant's metered usage in [from, to]",
  security: [{ bearerAuth: [] }],
  request: { query: z.object({ from: Time, to: Time }) },
  responses: {
    200: {
      description: 'Usage records and totals',
      content: { 'application/json': { schema: UsageResponse } },
    },
    ...errorResponses(400, 401, 503),
  },
});

/** Calendar date, optionally with time and zone: what ISO 8601 clients send (Date.parse alone reads '-1' as 2001). */
const ISO_8601 = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/;

export function parseTime(v: string | undefined, name: string, def: number): number {
  if (v === undefined || v === '') return def;
  const ms = /^\d+$/.test(v) ? Number(v) : ISO_8601.test(v) ? Date.parse(v) : Number.NaN;
  if (!Number.isSafeInteger(ms))
    throw invalid(
      `${name} must be an ISO 8601 date or non-negative milliseconds since epoch, got '${v}'`,
      name,
    );
  return ms;
}

export function usageRoutes(ctx: AppContext) {
  return router().openapi(usageRoute, async (c) => {
    const q = c.req.valid('query');
    const tenant = c.get('tenant');
    const to = parseTime(q.to, 'to', ctx.clock());
    const from = parseTime(q.from, 'from', 0);
    if (from > to) throw invalid('from must not be after to', 'from');
    const raw = (await ctx.redis.xrange(keys.tenantUsage(tenant), String(from), String(to))) as [
      string,
      string[],
    ][];
    const data: UsageRecord[] = raw.map(([, fields]) => decodeUsage(fields));
    const byJob = new Map<string, UsageRecord[]>();
    for (const r of data) byJob.set(r.jobId, [...(byJob.get(r.jobId) ?? []), r]);
    const jobs = [...byJob.entries()].map(([jobId, recs]) => ({
      job_id: jobId,
      model: recs[0].model,
      attempts: recs.length,
      ...sumUsage(recs),
    }));
    return c.json({ object: 'usage' as const, tenant, from, to, data, jobs, totals: sumUsage(data) }, 200);
  });
}
