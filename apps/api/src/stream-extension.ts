/**
 * The `ppsd` extension field of OpenAI stream chunks (clients ignore unknown fields):
 * - on a text chunk, `{segments: [{text, draft}]}`: the chunk's text per token, `draft: true` where the
 *   token was a draft the verifier accepted (the rest are the verifier's own tokens);
 * - on the finish chunk, the job's speculation summary and generation speed, from the worker's `done`.
 */
import type { StreamEvent, TokenSegment } from '@ppsd/contract';
import type { StreamEntry } from './adapters/redis-events';

export interface TextExtension {
  segments: TokenSegment[];
}

export interface FinishExtension {
  decoder: string;
  draft_tokens_proposed: number;
  draft_tokens_accepted: number;
  acceptance_rate: number;
  mean_accepted_length: number;
  completion_tokens: number;
  /** Completion tokens per second between the worker's start and done events (their stream entry times). */
  tokens_per_second: number;
}

const entryMs = (id: string) => Number(id.slice(0, id.indexOf('-')));

export const textExtension = (ev: Extract<StreamEvent, { type: 'tokens' }>): TextExtension | undefined =>
  ev.segments ? { segments: ev.segments } : undefined;

/** The finish extension of a job whose last entry is its `done` event (undefined otherwise). */
export function finishExtension(entries: StreamEntry[]): FinishExtension | undefined {
  const done = entries.at(-1);
  if (done?.event.type !== 'done') return undefined;
  const { speculation: s, usage } = done.event.result;
  const start = [...entries].reverse().find((e) => e.event.type === 'start');
  const seconds = start ? (entryMs(done.id) - entryMs(start.id)) / 1000 : 0;
  return {
    decoder: s.decoder,
    draft_tokens_proposed: s.draftsProposed,
    draft_tokens_accepted: s.draftsAccepted,
    acceptance_rate: s.acceptanceRate,
    mean_accepted_length: s.meanAcceptedLength,
    completion_tokens: usage.completion_tokens,
    tokens_per_second: seconds > 0 ? usage.completion_tokens / seconds : 0,
  };
}
