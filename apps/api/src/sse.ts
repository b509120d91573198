/**
 * Server-sent events as a plain ReadableStream, so the bytes are exactly ours (OpenAI's `data: …\n\n`
 * framing) under both @hono/node-server and the Lambda streaming adapter. A comment line keeps idle
 * streams open through proxies (SSE parsers, the openai client's included, skip comments).
 */
import type { Logger } from '@ppsd/contract/log';

export interface SseWriter {
  /** `data: <data>\n\n`, optionally preceded by `id: <id>\n`. */
  send(data: string, id?: string): void;
  /** Aborted when the client goes away (or the stream is otherwise cancelled). */
  signal: AbortSignal;
}

export const SSE_HEADERS = {
  'Content-Type': 'text/event-stream; charset=utf-8',
  'Cache-Control': 'no-cache, no-transform',
  'X-Accel-Buffering': 'no',
};

export function sseResponse(
  produce: (w: SseWriter) => Promise<void>,
  opts: {
    keepAliveMs: number;
    requestSignal?: AbortSignal;
    headers?: Record<string, string>;
    /** Gets one line when the stream ends (events sent, duration, whether the client left first). */
    log?: Logger;
  },
): Response {
  const enc = new TextEncoder();
  const started = performance.now();
  let sent = 0;
  const ac = new AbortController();
  const onRequestAbort = () => ac.abort();
  opts.requestSignal?.addEventListener('abort', onRequestAbort, { once: true });
  if (opts.requestSignal?.aborted) ac.abort();
  let keepAlive: NodeJS.Timeout | undefined;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      let open = true;
      const write = (s: string) => {
        if (!open) return;
        try {
          controller.enqueue(enc.encode(s));
        } catch {
          open = false;
          ac.abort();
        }
      };
      keepAlive = setInterval(() => write(': keep-alive\n\n'), opts.keepAliveMs);
      const w: SseWriter = {
        send: (data, id) => {
          sent++;
          write(id !== undefined ? `id: ${id}\ndata: ${data}\n\n` : `data: ${data}\n\n`);
        },
        signal: ac.signal,
      };
      produce(w)
        .catch((err: unknown) => {
          const message = err instanceof Error ? err.message : String(err);
          opts.log?.error({ err }, 'stream relay failed');
          write(
            `data: ${JSON.stringify({ error: { message, type: 'server_error', code: 'stream_error', param: null } })}\n\n`,
          );
        })
        .finally(() => {
          opts.log?.info(
            {
              events: sent,
              ms: Math.round(performance.now() - started),
              clientGone: ac.signal.aborted,
            },
            'stream relay ended',
          );
          clearInterval(keepAlive);
          opts.requestSignal?.removeEventListener('abort', onRequestAbort);
          if (open) {
            open = false;
            try {
              controller.close();
            } catch {
              // already closed by a cancel
            }
          }
        });
    },
    cancel() {
      clearInterval(keepAlive);
      ac.abort();
    },
  });
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...opts.headers } });
}
