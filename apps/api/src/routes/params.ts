/** Request fields -> admission input, shared by every generation route. */

import type { z } from '@hono/zod-openapi';
import type { ChatMessage, Speculation } from '@ppsd/contract';
import type { ChatMessageSchema } from '../schemas';

export interface SamplingFields {
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  logit_bias?: Record<string, number> | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  speculation?: unknown;
  user?: string | null;
}

export function samplingInput(b: SamplingFields) {
  return {
    maxTokens: b.max_tokens ?? undefined,
    temperature: b.temperature ?? undefined,
    topP: b.top_p ?? undefined,
    seed: b.seed ?? undefined,
    stop: b.stop == null ? undefined : typeof b.stop === 'string' ? [b.stop] : b.stop,
    logitBias: b.logit_bias ?? undefined,
    presencePenalty: b.presence_penalty ?? undefined,
    frequencyPenalty: b.frequency_penalty ?? undefined,
    speculation: (b.speculation ?? undefined) as Speculation | undefined,
    user: b.user ?? undefined,
  };
}

/** Top alternatives per token a chat request asks for (`logprobs: true` + `top_logprobs`), or none. */
export const chatLogprobs = (b: { logprobs?: boolean | null; top_logprobs?: number | null }) =>
  b.logprobs === true ? (b.top_logprobs ?? 0) : undefined;

export function chatMessages(messages: z.infer<typeof ChatMessageSchema>[]): ChatMessage[] {
  return messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
}

export const idempotencyKeyOf = (h: { 'idempotency-key'?: string }) => h['idempotency-key'];
