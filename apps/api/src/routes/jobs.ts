/**
 * The jobs resource: generation decoupled from the connection. Events of GET /v1/jobs/:id/stream carry
 * `id: <Redis Stream entry id>`; reconnecting with Last-Event-ID (or ?starting_after=) replays exactly
 * the entries after it. The stream closes after the terminal event (`done` or `error`); reconnecting
 * past that answers 204, which stops EventSource from retrying.
 */

import { createRoute, z } from '@hono/zod-openapi';
import { keys } from '@ppsd/contract';
import { STREAM_ID } from '../adapters/redis-events';
import type { AppContext } from '../context';
import { router } from '../context';
import { invalid } from '../errors';
import type { ModelInfo } from '../models';
import { lostJobCheck } from '../relay';
import {
  errorResponses,
  IdempotencyHeader,
  IdParam,
  JobCreated,
  JobCreateRequest,
  JobSchema,
} from '../schemas';
import { sseResponse } from '../sse';
import { chatMessages, idempotencyKeyOf, samplingInput } from './params';

const security = [{ bearerAuth: [] }];

export const createJobRoute = createRoute({
  method: 'post',
  path: '/v1/jobs',
  tags: ['Jobs'],
  summary: 'Create a generation job (prompt, messages or text)',
  security,
  request: {
    headers: IdempotencyHeader,
    body: { required: true, content: { 'application/json': { schema: JobCreateRequest } } },
  },
  responses: {
    202: { description: 'Job admitted', content: { 'application/json': { schema: JobCreated } } },
    200: {
      description: 'The existing job for this Idempotency-Key',
      content: { 'application/json': { schema: JobCreated } },
    },
    ...errorResponses(400, 401, 404, 413, 429, 503),
  },
});

export const getJobRoute = createRoute({
  method: 'get',
  path: '/v1/jobs/{id}',
  tags: ['Jobs'],
  summary: 'Job status, text so far or result, usage and speculation stats',
  security,
  request: { params: IdParam },
  responses: {
    200: { description: 'The job', content: { 'application/json': { schema: JobSchema } } },
    ...errorResponses(401, 404, 503),
  },
});

export const streamJobRoute = createRoute({
  method: 'get',
  path: '/v1/jobs/{id}/stream',
  tags: ['Jobs'],
  summary: "SSE of the job's events; resumable with Last-Event-ID or ?starting_after=",
  security,
  request: {
    params: IdParam,
    query: z.object({
      starting_after: z.string().optional().openapi({ description: 'Entry id to resume after' }),
    }),
    headers: z.object({
      'last-event-id': z
        .string()
        .optional()
        .openapi({ param: { name: 'last-event-id', in: 'header' } }),
    }),
  },
  responses: {
    200: {
      description: 'text/event-stream; each event is `id: <entry id>` + `data: <StreamEvent JSON>`',
      content: { 'text/event-stream': { schema: z.string() } },
    },
    204: { description: 'The job already ended before the given cursor: nothing more will come' },
    ...errorResponses(400, 401, 404, 503),
  },
});

export const cancelJobRoute = createRoute({
  method: 'post',
  path: '/v1/jobs/{id}/cancel',
  tags: ['Jobs'],
  summary: 'Cancel a job (a queued job ends at once; a running one within one decoding step)',
  security,
  request: { params: IdParam },
  responses: {
    200: {
      description: 'The job after the cancel request',
      content: { 'application/json': { schema: JobSchema } },
    },
    ...errorResponses(401, 404, 503),
  },
});

const cmpId = (a: string, b: string) => {
  const [am, as] = a.split('-').map(BigInt);
  const [bm, bs] = b.split('-').map(BigInt);
  return am === bm ? (as === bs ? 0 : as < bs ? -1 : 1) : am < bm ? -1 : 1;
};

export function jobsRoutes(ctx: AppContext) {
  return router()
    .openapi(createJobRoute, async (c) => {
      const body = c.req.valid('json');
      const kind = body.prompt !== undefined ? 'completion' : body.messages ? 'chat' : 'summarize';
      const prompt =
        kind === 'completion'
          ? body.prompt!
          : kind === 'chat'
            ? (model: ModelInfo) => model.prompts.chat(chatMessages(body.messages!))
            : (model: ModelInfo) => model.prompts.summarize(body.text!);
      const { meta, created } = await ctx.jobs.admit(
        {
          tenant: c.get('tenant'),
          model: body.model,
          kind,
          prompt,
          ...samplingInput(body),
          logprobs: body.logprobs ?? undefined,
          idempotencyKey: idempotencyKeyOf(c.req.valid('header')),
        },
        c.get('log'),
      );
      if (created) return c.json({ id: meta.id, object: 'job' as const, status: 'queued' as const }, 202);
      const view = await ctx.jobs.view(meta);
      return c.json({ id: meta.id, object: 'job' as const, status: view.status }, 200);
    })
    .openapi(getJobRoute, async (c) => {
      const meta = await ctx.jobs.getMeta(c.get('tenant'), c.req.valid('param').id);
      return c.json(await ctx.jobs.view(meta), 200);
    })
    .openapi(streamJobRoute, async (c) => {
      const meta = await ctx.jobs.getMeta(c.get('tenant'), c.req.valid('param').id);
      const cursor = c.req.valid('header')['last-event-id'] ?? c.req.valid('query').starting_after;
      if (cursor !== undefined && !STREAM_ID.test(cursor)) {
        throw invalid(
          "Last-Event-ID / starting_after must be a stream entry id like '1700000000000-0'",
          'starting_after',
        );
      }
      if (cursor) {
        const last = await ctx.redis.xrevrange(keys.jobEvents(meta.id), '+', '-', 'COUNT', 1);
        const lastEntry = last[0];
        if (lastEntry && cmpId(cursor, lastEntry[0]) >= 0) {
          const ev = JSON.parse(lastEntry[1][lastEntry[1].indexOf('e') + 1]) as { type: string };
          if (ev.type === 'done' || ev.type === 'error') return c.body(null, 204);
        }
      }
      const log = c.get('log').child({ jobId: meta.id });
      return sseResponse(
        async (w) => {
          for await (const e of ctx.events.follow(meta.id, {
            after: cursor,
            signal: w.signal,
            onIdle: lostJobCheck(ctx, meta, log),
          })) {
            w.send(JSON.stringify(e.event), e.id);
          }
        },
        { keepAliveMs: ctx.config.keepAliveMs, requestSignal: c.req.raw.signal, log },
      );
    })
    .openapi(cancelJobRoute, async (c) => {
      const meta = await ctx.jobs.getMeta(c.get('tenant'), c.req.valid('param').id);
      c.get('log').info({ jobId: meta.id }, 'cancel requested');
      await ctx.jobs.cancel(meta);
      return c.json(await ctx.jobs.view(meta), 200);
    });
}
