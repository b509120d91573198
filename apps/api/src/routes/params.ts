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
  speculation?: unknown;
}

export function samplingInput(b: SamplingFields) {
  return {
    maxTokens: b.max_tokens ?? undefined,
    temperature: b.temperature ?? undefined,
    topP: b.top_p ?? undefined,
    seed: b.seed ?? undefined,
    stop: b.stop == null ? undefined : typeof b.stop === 'string' ? [b.stop] : b.stop,
    speculation: (b.speculation ?? undefined) as Speculation | undefined,
  };
}

export function chatMessages(messages: z.infer<typeof ChatMessageSchema>[]): ChatMessage[] {
  return messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
}

export const idempotencyKeyOf = (h: { 'idempotency-key'?: string }) => h['idempotency-key'];
