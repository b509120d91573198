/**
 * Server-sent events as a plain ReadableStream, so the bytes are exactly ours (OpenAI's `data: …\n\n`
 * framing) under both @hono/node-server and the Lambda streaming adapter. A comment line keeps idle
 * streams open through proxies (SSE parsers, the openai client's included, skip comments).
 */

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
  opts: { keepAliveMs: number; requestSignal?: AbortSignal; headers?: Record<string, string> },
): Response {
  const enc = new TextEncoder();
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
        send: (data, id) => write(id !== undefined ? `id: ${id}\ndata: ${data}\n\n` : `data: ${data}\n\n`),
        signal: ac.signal,
      };
      produce(w)
        .catch((err: unknown) => {
          const message = err instanceof Error ? err.message : String(err);
          write(
            `data: ${JSON.stringify({ error: { message, type: 'server_error', code: 'stream_error', param: null } })}\n\n`,
          );
        })
        .finally(() => {
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
