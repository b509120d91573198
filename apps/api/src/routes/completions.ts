/** POST /v1/completions (OpenAI text completions). */
import { createRoute, z } from '@hono/zod-openapi';
import type { AppContext } from '../context';
import { router } from '../context';
import { completionObject } from '../openai';
import { answerJob } from '../relay';
import { CompletionRequest, CompletionResponse, errorResponses, IdempotencyHeader } from '../schemas';
import { idempotencyKeyOf, samplingInput } from './params';

export const completionsRoute = createRoute({
  method: 'post',
  path: '/v1/completions',
  tags: ['OpenAI'],
  summary: 'Create a text completion (OpenAI-compatible; stream: true answers SSE)',
  security: [{ bearerAuth: [] }],
  request: {
    headers: IdempotencyHeader,
    body: { required: true, content: { 'application/json': { schema: CompletionRequest } } },
  },
  responses: {
    200: {
      description: 'The completion, or an SSE stream of text_completion chunks ending with data: [DONE]',
      content: {
        'application/json': { schema: CompletionResponse },
        'text/event-stream': { schema: z.string() },
      },
    },
    ...errorResponses(400, 401, 404, 413, 429, 500, 503),
  },
});

export function completionsRoutes(ctx: AppContext) {
  return router().openapi(completionsRoute, async (c) => {
    const body = c.req.valid('json');
    const { meta } = await ctx.jobs.admit(
      {
        tenant: c.get('tenant'),
        model: body.model,
        kind: 'completion',
        prompt: typeof body.prompt === 'string' ? body.prompt : body.prompt[0],
        ...samplingInput(body),
        logprobs: body.logprobs ?? undefined,
        idempotencyKey: idempotencyKeyOf(c.req.valid('header')),
      },
      c.get('log'),
    );
    return answerJob(ctx, meta, c.req.raw, body, {
      chat: false,
      logprobs: body.logprobs ?? undefined,
      toObject: completionObject,
      log: c.get('log'),
    });
  });
}
