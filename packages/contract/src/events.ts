import type { FinishReason, JobResult, TokenLogprob } from './job';

/**
 * Events of a job's Redis Stream, in order. Every event carries the attempt that wrote it; token events
 * carry the index of their first token in the completion, so a retried attempt that regenerates the same
 * tokens (same seed) publishes only indexes the stream does not have yet: nothing is duplicated.
 * A job that asked for logprobs gets one `logprobs` entry per id on each token event.
 */
export type StreamEvent =
  | { type: 'start'; attempt: number; workerId: string; decoder: string; queuedMs: number }
  | {
      type: 'tokens';
      attempt: number;
      index: number;
      ids: number[];
      text: string;
      /**
       * `text` cut per token, `draft: true` for text of draft tokens the verifier accepted (the rest is the
       * verifier's own tokens); concatenated they equal `text`. Absent when not known.
       */
      segments?: TokenSegment[];
      logprobs?: TokenLogprob[];
    }
  /** The attempt `attempt` was lost (its worker stopped answering); the job runs again as attempt + 1. */
  | { type: 'retry'; attempt: number; reason: string }
  | { type: 'done'; attempt: number; result: JobResult }
  | { type: 'error'; attempt: number; message: string; code: string; finishReason: FinishReason };

/** Text of one token (or a piece of it) and whether it was an accepted draft token. */
export interface TokenSegment {
  text: string;
  draft: boolean;
}

/** The segments of the last `chars` characters of their text (a retried attempt's unpublished tail). */
export function lastSegments(segments: TokenSegment[], chars: number): TokenSegment[] {
  const out: TokenSegment[] = [];
  for (let i = segments.length - 1; i >= 0 && chars > 0; i--) {
    const s = segments[i];
    if (s.text.length <= chars) out.unshift(s);
    else out.unshift({ text: s.text.slice(s.text.length - chars), draft: s.draft });
    chars -= s.text.length;
  }
  return out;
}

/** Redis Stream entries are flat field lists; an event is one field `e` holding its JSON. */
export const encodeEvent = (event: StreamEvent): [string, string] => ['e', JSON.stringify(event)];

export function decodeEvent(fields: string[]): StreamEvent {
  const at = fields.indexOf('e');
  if (at < 0 || at + 1 >= fields.length) throw new Error('stream entry without an event field');
  return JSON.parse(fields[at + 1]) as StreamEvent;
}

export const isTerminal = (event: StreamEvent): boolean => event.type === 'done' || event.type === 'error';
