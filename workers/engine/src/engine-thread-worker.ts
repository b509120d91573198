/**
 * The thread side of EngineThread: opens one Engine and serves generate / abort / close messages. The
 * batched steps (synchronous ORT runs) block only this thread's event loop, never the caller's.
 */
import { parentPort } from 'node:worker_threads';
import { Engine } from './engine';
import type { FromEngineThread, ThreadError, ToEngineThread } from './engine-thread-protocol';

const port = parentPort;
if (!port) throw new Error('engine-thread-worker.ts runs as a worker thread');
const send = (m: FromEngineThread) => port.postMessage(m);

let engine: Engine | undefined;
const aborts = new Map<number, AbortController>();
const acks = new Map<number, () => void>();
/** Load pushed to the caller while generations run, so its schedulerStats() never waits. */
let statsTimer: NodeJS.Timeout | undefined;

function threadError(err: unknown): ThreadError {
  const e = err instanceof Error ? err : new Error(String(err));
  const fields = Object.fromEntries(Object.entries(e).filter(([, v]) => typeof v !== 'function'));
  return { name: e.name, message: e.message, fields };
}

function pushStats(): void {
  if (engine) send({ type: 'stats', stats: engine.schedulerStats() });
}

async function generate(m: Extract<ToEngineThread, { type: 'generate' }>): Promise<void> {
  const ac = new AbortController();
  if (m.aborted) ac.abort();
  aborts.set(m.id, ac);
  statsTimer ??= setInterval(pushStats, 200);
  try {
    const result = await engine!.generate(
      m.prompt,
      {
        ...m.params,
        signal: ac.signal,
        onAdmitted: () => {
          send({ type: 'admitted', id: m.id });
          pushStats();
        },
      },
      (event) => {
        send({ type: 'tokens', id: m.id, event });
        if (m.ack) return new Promise<void>((resolve) => acks.set(m.id, resolve));
      },
    );
    send({ type: 'result', id: m.id, result });
  } catch (err) {
    send({ type: 'error', id: m.id, error: threadError(err) });
  } finally {
    aborts.delete(m.id);
    acks.delete(m.id);
    pushStats();
    if (aborts.size === 0 && statsTimer) {
      clearInterval(statsTimer);
      statsTimer = undefined;
    }
  }
}

port.on('message', async (m: ToEngineThread) => {
  switch (m.type) {
    case 'open':
      try {
        const log = m.logs ? (message: string) => send({ type: 'log', message }) : undefined;
        engine = await Engine.open(m.packageDir, { ...m.options, log });
        const info = {
          maxContext: engine.maxContext,
          maxStages: engine.maxStages,
          defaultDecoder: engine.defaultDecoder,
        };
        send({ type: 'opened', info, stats: engine.schedulerStats() });
      } catch (err) {
        send({ type: 'open-error', error: threadError(err) });
      }
      return;
    case 'generate':
      void generate(m);
      return;
    case 'abort':
      aborts.get(m.id)?.abort();
      return;
    case 'ack': {
      const resolve = acks.get(m.id);
      acks.delete(m.id);
      resolve?.();
      return;
    }
    case 'close':
      if (statsTimer) clearInterval(statsTimer);
      await engine?.close().catch(() => undefined);
      send({ type: 'closed' });
      port.close();
      return;
  }
});
