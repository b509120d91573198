/**
 * Token counting off the event loop: a small pool of worker threads, each holding the tokenizers it was
 * asked for. A request goes to the thread with the fewest outstanding texts, so one long prompt delays
 * only what queues behind it on its thread, never /healthz or another tenant's streaming.
 * Threads are unref'd: an idle pool never keeps the process alive. A thread that dies fails what it held
 * and is replaced on the next request.
 */
import type { Worker } from 'node:worker_threads';
import { spawnModuleWorker } from '@ppsd/engine/threads';
import type { CountReply, CountRequest, TokenizerOptions } from './protocol';

interface Pending {
  resolve: (tokens: number) => void;
  reject: (err: Error) => void;
}

interface Thread {
  worker: Worker;
  pending: Map<number, Pending>;
}

export interface TokenCountPool {
  /** Prompt tokens of `text` with the tokenizer in `file` loaded with `options` (BOS where it adds one). */
  count(file: string, text: string, options?: TokenizerOptions): Promise<number>;
  close(): Promise<void>;
}

export function createTokenCountPool(size = 1): TokenCountPool {
  const threads: (Thread | undefined)[] = new Array(Math.max(1, size)).fill(undefined);
  let nextId = 0;

  const start = (slot: number): Thread => {
    const worker = spawnModuleWorker(new URL('./thread.ts', import.meta.url));
    const thread: Thread = { worker, pending: new Map() };
    worker.unref();
    worker.on('message', (reply: CountReply) => {
      const p = thread.pending.get(reply.id);
      if (!p) return;
      thread.pending.delete(reply.id);
      if (thread.pending.size === 0) worker.unref();
      if ('error' in reply) p.reject(new Error(reply.error));
      else p.resolve(reply.tokens);
    });
    const fail = (err: Error) => {
      if (threads[slot] === thread) threads[slot] = undefined;
      for (const p of thread.pending.values()) p.reject(err);
      thread.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`token-count thread exited (code ${code})`)));
    threads[slot] = thread;
    return thread;
  };

  const pick = (): Thread => {
    let best = -1;
    for (let i = 0; i < threads.length; i++) {
      const t = threads[i];
      if (!t) return start(i);
      if (best < 0 || t.pending.size < (threads[best] as Thread).pending.size) best = i;
    }
    return threads[best] as Thread;
  };

  return {
    count(file, text, options) {
      const thread = pick();
      const id = nextId++;
      return new Promise<number>((resolve, reject) => {
        thread.pending.set(id, { resolve, reject });
        thread.worker.ref(); // a count in flight keeps the process up until it answers
        thread.worker.postMessage({ id, file, options, text } satisfies CountRequest);
      });
    },
    async close() {
      await Promise.all(threads.map((t) => t?.worker.terminate()));
      threads.fill(undefined);
    },
  };
}
