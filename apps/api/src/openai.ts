/**
 * Job events -> OpenAI objects: non-stream responses and streaming chunks for text completions
 * (`text_completion`, also used by /v1/summarize) and chat (`chat.completion` / `chat.completion.chunk`).
 */
import type { FinishReason, TokenLogprob, TokenUsage, TopLogprob } from '@ppsd/contract';
import type { StreamEntry } from './adapters/redis-events';
import { ApiError } from './errors';
import { accumulate, type JobMeta } from './jobs';

export type OpenAIFinish = 'stop' | 'length';

/** OpenAI has no 'cancelled': a cancelled generation simply stopped. */
export const openaiFinish = (r: FinishReason): OpenAIFinish => (r === 'length' ? 'length' : 'stop');

export interface Outcome {
  text: string;
  finishReason: FinishReason;
  usage: TokenUsage;
  /** One per completion token when the job asked for logprobs (else empty). */
  logprobs: TokenLogprob[];
}

/** How a request asked for logprobs: the alternatives per token, or undefined for none. */
export type LogprobsRequest = number | undefined;

/** Legacy completions shape: parallel arrays; the sampled token is always among top_logprobs. */
export function completionLogprobs(entries: TokenLogprob[]) {
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => {
      const top = Object.fromEntries(e.top.map((t) => [t.token, t.logprob]));
      top[e.token] ??= e.logprob;
      return top;
    }),
    text_offset: entries.map((e) => e.offset),
  };
}

const chatToken = (t: TopLogprob) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes });

/** Chat shape: one content entry per token with its alternatives. */
export function chatLogprobs(entries: TokenLogprob[]) {
  return {
    content: entries.map((e) => ({ ...chatToken(e), top_logprobs: e.top.map(chatToken) })),
    refusal: null,
  };
}

/** The final outcome of a job from its entries (the last must be terminal); throws for a failed job. */
export function outcomeOf(meta: JobMeta, entries: StreamEntry[]): Outcome {
  const acc = accumulate(entries);
  const term = acc.terminal;
  if (term?.type === 'done') {
    const { text, finishReason, usage } = term.result;
    return { text, finishReason, usage, logprobs: acc.logprobs.slice(0, usage.completion_tokens) };
  }
  if (term?.type === 'error' && term.finishReason !== 'cancelled') {
    throw new ApiError(500, `The job failed: ${term.message}`, 'server_error', term.code);
  }
  const usage = {
    prompt_tokens: meta.promptTokens,
    completion_tokens: acc.completionTokens,
    total_tokens: meta.promptTokens + acc.completionTokens,
  };
  return { text: acc.text, finishReason: 'cancelled', usage, logprobs: acc.logprobs };
}

export function completionObject(meta: JobMeta, out: Outcome, lp: LogprobsRequest) {
  return {
    id: meta.id,
    object: 'text_completion' as const,
    created: Math.floor(meta.createdAt / 1000),
    model: meta.model,
    choices: [
      {
        text: out.text,
        index: 0,
        logprobs: lp === undefined ? null : completionLogprobs(out.logprobs),
        finish_reason: openaiFinish(out.finishReason),
      },
    ],
    usage: out.usage,
  };
}

export function chatObject(meta: JobMeta, out: Outcome, lp: LogprobsRequest) {
  return {
    id: meta.id,
    object: 'chat.completion' as const,
    created: Math.floor(meta.createdAt / 1000),
    model: meta.model,
    choices: [
      {
        index: 0,
        message: { role: 'assistant' as const, content: out.text, refusal: null },
        logprobs: lp === undefined ? null : chatLogprobs(out.logprobs),
        finish_reason: openaiFinish(out.finishReason),
      },
    ],
    usage: out.usage,
  };
}

/**
 * Builds the chunk JSON strings of one stream (`usage: null` on each when include_usage is on; the
 * tokens' logprobs on each text chunk when the request asked for them).
 */
export function chunker(meta: JobMeta, chat: boolean, includeUsage: boolean, lp: LogprobsRequest) {
  const base = { id: meta.id, created: Math.floor(meta.createdAt / 1000), model: meta.model };
  const withUsage = (o: object) => JSON.stringify(includeUsage ? { ...o, usage: null } : o);
  /** The `ppsd` extension field (./stream-extension), when there is one. */
  const ppsd = (ext: object | undefined) => (ext ? { ppsd: ext } : {});
  return {
    first(): string | undefined {
      if (!chat) return undefined;
      return withUsage({
        ...base,
        object: 'chat.completion.chunk',
        choices: [
          { index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null },
        ],
      });
    },
    text(text: string, tokens: TokenLogprob[] = [], ext?: object): string {
      return chat
        ? withUsage({
            ...base,
            object: 'chat.completion.chunk',
            choices: [
              {
                index: 0,
                delta: { content: text },
                logprobs: lp === undefined ? null : chatLogprobs(tokens),
                finish_reason: null,
              },
            ],
            ...ppsd(ext),
          })
        : withUsage({
            ...base,
            object: 'text_completion',
            choices: [
              {
                text,
                index: 0,
                logprobs: lp === undefined ? null : completionLogprobs(tokens),
                finish_reason: null,
              },
            ],
            ...ppsd(ext),
          });
    },
    /**
     * A chunk with no choices carrying ppsd's own news in `ppsd` (e.g. that the job is being retried):
     * OpenAI clients read it like the usage chunk and ignore the extension field.
     */
    notice(ppsd: Record<string, unknown>): string {
      return withUsage({
        ...base,
        object: chat ? 'chat.completion.chunk' : 'text_completion',
        choices: [],
        ppsd,
      });
    },
    finish(reason: FinishReason, ext?: object): string {
      const finish_reason = openaiFinish(reason);
      return chat
        ? withUsage({
            ...base,
            object: 'chat.completion.chunk',
            choices: [{ index: 0, delta: {}, logprobs: null, finish_reason }],
            ...ppsd(ext),
          })
        : withUsage({
            ...base,
            object: 'text_completion',
            choices: [{ text: '', index: 0, logprobs: null, finish_reason }],
            ...ppsd(ext),
          });
    },
    usage(usage: TokenUsage): string {
      return JSON.stringify({
        ...base,
        object: chat ? 'chat.completion.chunk' : 'text_completion',
        choices: [],
        usage,
      });
    },
  };
}
