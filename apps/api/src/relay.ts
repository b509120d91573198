/**
 * Answering an OpenAI-style request once its job is admitted: wait for the end (non-stream) or relay
 * the job's events as OpenAI SSE chunks (stream). A client that goes away leaves the job running unless
 * the request set `cancel_on_disconnect: true`.
 */
import type { Logger } from '@ppsd/contract/log';
import type { StreamEntry } from './adapters/redis-events';
import type { AppContext } from './context';
import type { JobMeta } from './jobs';
import { chunker, type LogprobsRequest, type Outcome, outcomeOf } from './openai';
import { sseResponse } from './sse';
import { finishExtension, textExtension } from './stream-extension';

export interface RelayOptions {
  chat: boolean;
  includeUsage: boolean;
  cancelOnDisconnect: boolean;
  logprobs: LogprobsRequest;
  /** The request's logger with the job's id (`c.get('log').child({jobId})`). */
  log?: Logger;
}

/** onIdle for followers: at most every 10 s after 5 s of silence, ask BullMQ whether the job is lost. */
export function lostJobCheck(ctx: AppContext, meta: JobMeta, log?: Logger) {
  let last = 0;
  return async (idleMs: number): Promise<StreamEntry | undefined> => {
    const now = Date.now();
    if (idleMs < 5_000 || now - last < 10_000) return undefined;
    last = now;
    return ctx.jobs.lostEnd(meta).catch((err: Error) => {
      log?.warn({ error: err.message }, 'lost-job check failed');
      return undefined;
    });
  };
}

async function cancelQuietly(ctx: AppContext, meta: JobMeta, log?: Logger) {
  log?.info('client gone: cancelling the job (cancel_on_disconnect)');
  await ctx.jobs.cancel(meta).catch((err: Error) => {
    log?.warn({ error: err.message }, 'cancel on disconnect failed');
  });
}

/** Follows the job to its end; returns all entries (the last is terminal), or undefined if aborted. */
export async function waitForEnd(
  ctx: AppContext,
  meta: JobMeta,
  signal: AbortSignal | undefined,
  cancelOnDisconnect: boolean,
  log?: Logger,
): Promise<StreamEntry[] | undefined> {
  const observe = ctx.metrics.jobObserver(meta.model, meta.createdAt);
  const entries: StreamEntry[] = [];
  let ended = false;
  for await (const e of ctx.events.follow(meta.id, { signal, onIdle: lostJobCheck(ctx, meta, log) })) {
    observe(e);
    entries.push(e);
    if (e.event.type === 'done' || e.event.type === 'error') ended = true;
  }
  if (!ended) {
    log?.info({ events: entries.length }, 'client gone before the job ended');
    if (cancelOnDisconnect) await cancelQuietly(ctx, meta, log);
    return undefined;
  }
  return entries;
}

export function relayStream(
  ctx: AppContext,
  meta: JobMeta,
  requestSignal: AbortSignal | undefined,
  o: RelayOptions,
) {
  const chunks = chunker(meta, o.chat, o.includeUsage, o.logprobs);
  return sseResponse(
    async (w) => {
      const first = chunks.first();
      if (first) w.send(first);
      const observe = ctx.metrics.jobObserver(meta.model, meta.createdAt);
      const entries: StreamEntry[] = [];
      let next = 0;
      let ended = false;
      for await (const e of ctx.events.follow(meta.id, {
        signal: w.signal,
        onIdle: lostJobCheck(ctx, meta, o.log),
      })) {
        observe(e);
        entries.push(e);
        const ev = e.event;
        if (ev.type === 'tokens') {
          if (ev.index + ev.ids.length <= next) continue; // a retried attempt's repeat
          const tokens =
            o.logprobs === undefined ? [] : (ev.logprobs ?? []).slice(Math.max(0, next - ev.index));
          next = ev.index + ev.ids.length;
          if (ev.text || tokens.length) w.send(chunks.text(ev.text, tokens, textExtension(ev)));
        } else if (ev.type === 'retry') {
          w.send(chunks.notice({ retry: { attempt: ev.attempt + 1, reason: ev.reason } }));
        } else if (ev.type === 'done' || ev.type === 'error') {
          ended = true;
          if (ev.type === 'error' && ev.finishReason !== 'cancelled') {
            w.send(
              JSON.stringify({
                error: {
                  message: `The job failed: ${ev.message}`,
                  type: 'server_error',
                  code: ev.code,
                  param: null,
                },
              }),
            );
          } else {
            const out = outcomeOf(meta, entries);
            w.send(chunks.finish(out.finishReason, finishExtension(entries)));
            if (o.includeUsage) w.send(chunks.usage(out.usage));
          }
          w.send('[DONE]');
        }
      }
      if (!ended && o.cancelOnDisconnect) await cancelQuietly(ctx, meta, o.log);
    },
    { keepAliveMs: ctx.config.keepAliveMs, requestSignal, log: o.log },
  );
}

/** The OpenAI request fields that decide how an admitted job is answered. */
export interface AnswerOptions {
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  cancel_on_disconnect?: boolean | null;
}

/**
 * Answers an admitted job the OpenAI way: SSE chunks when the request streams, else the final object
 * (`toObject`: a text_completion or a chat.completion) once the job ends. 499 when the client left first.
 */
export async function answerJob(
  ctx: AppContext,
  meta: JobMeta,
  request: Request,
  body: AnswerOptions,
  o: {
    chat: boolean;
    logprobs: LogprobsRequest;
    toObject: (meta: JobMeta, outcome: Outcome, logprobs: LogprobsRequest) => unknown;
    /** The request's logger (`c.get('log')`); its lines about this job carry the job's id. */
    log?: Logger;
  },
): Promise<Response> {
  const cancelOnDisconnect = body.cancel_on_disconnect === true;
  const log = o.log?.child({ jobId: meta.id });
  if (body.stream) {
    return relayStream(ctx, meta, request.signal, {
      chat: o.chat,
      includeUsage: body.stream_options?.include_usage === true,
      cancelOnDisconnect,
      logprobs: o.logprobs,
      log,
    });
  }
  const entries = await waitForEnd(ctx, meta, request.signal, cancelOnDisconnect, log);
  if (!entries) return new Response(null, { status: 499 });
  return Response.json(o.toObject(meta, outcomeOf(meta, entries), o.logprobs));
}
