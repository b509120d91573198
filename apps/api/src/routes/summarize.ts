/** POST /v1/summarize: the text wrapped in the model's summarization prompt, answered like a completion. */

import { createRoute, z } from '@hono/zod-openapi';
import type { AppContext } from '../context';
import { router } from '../context';
import { completionObject } from '../openai';
import { answerJob } from '../relay';
import { CompletionResponse, errorResponses, IdempotencyHeader, SummarizeRequest } from '../schemas';
import { idempotencyKeyOf, samplingInput } from './params';

export const summarizeRoute = createRoute({
  method: 'post',
  path: '/v1/summarize',
  tags: ['Summarization'],
  summary: 'Summarize a text (answers like /v1/completions, stream included)',
  security: [{ bearerAuth: [] }],
  request: {
    headers: IdempotencyHeader,
    body: { required: true, content: { 'application/json': { schema: SummarizeRequest } } },
  },
  responses: {
    200: {
      description: 'The summary as a text_completion object, or an SSE stream of text_completion chunks',
      content: {
        'application/json': { schema: CompletionResponse },
        'text/event-stream': { schema: z.string() },
      },
    },
    ...errorResponses(400, 401, 404, 413, 429, 500, 503),
  },
});

export function summarizeRoutes(ctx: AppContext) {
  return router().openapi(summarizeRoute, async (c) => {
    const body = c.req.valid('json');
    const { meta } = await ctx.jobs.admit(
      {
        tenant: c.get('tenant'),
        model: body.model,
        kind: 'summarize',
        prompt: (model) => model.prompts.summarize(body.text),
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
