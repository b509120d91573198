/** POST /v1/chat/completions (OpenAI chat completions). */

import { createRoute, z } from '@hono/zod-openapi';
import type { AppContext } from '../context';
import { router } from '../context';
import { chatObject } from '../openai';
import { answerJob } from '../relay';
import { ChatRequest, ChatResponse, errorResponses, IdempotencyHeader } from '../schemas';
import { chatLogprobs, chatMessages, idempotencyKeyOf, samplingInput } from './params';

export const chatRoute = createRoute({
  method: 'post',
  path: '/v1/chat/completions',
  tags: ['OpenAI'],
  summary: 'Create a chat completion (OpenAI-compatible; stream: true answers SSE)',
  security: [{ bearerAuth: [] }],
  request: {
    headers: IdempotencyHeader,
    body: { required: true, content: { 'application/json': { schema: ChatRequest } } },
  },
  responses: {
    200: {
      description:
        'The chat completion, or an SSE stream of chat.completion.chunk objects ending with data: [DONE]',
      content: {
        'application/json': { schema: ChatResponse },
        'text/event-stream': { schema: z.string() },
      },
    },
    ...errorResponses(400, 401, 404, 413, 429, 500, 503),
  },
});

export function chatRoutes(ctx: AppContext) {
  return router().openapi(chatRoute, async (c) => {
    const body = c.req.valid('json');
    const sampling = samplingInput(body);
    const { meta } = await ctx.jobs.admit(
      {
        tenant: c.get('tenant'),
        model: body.model,
        kind: 'chat',
        prompt: (model) => model.prompts.chat(chatMessages(body.messages)),
        ...sampling,
        maxTokens: body.max_completion_tokens ?? sampling.maxTokens,
        logprobs: chatLogprobs(body),
        idempotencyKey: idempotencyKeyOf(c.req.valid('header')),
      },
      c.get('log'),
    );
    return answerJob(ctx, meta, c.req.raw, body, {
      chat: true,
      logprobs: chatLogprobs(body),
      toObject: chatObject,
      log: c.get('log'),
    });
  });
}
