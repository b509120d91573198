/**
 * An Engine in its own worker thread, behind the same generate / schedulerStats / close surface.
 *
 * onnxruntime-node runs a session synchronously on the calling thread, so an in-process Engine blocks
 * its caller's event loop for every batched step. A service (the GPU worker) would then publish tokens,
 * renew job locks and take new jobs only between steps; with the engine in a thread, that I/O overlaps
 * the compute. Token events, admission and the scheduler's load come back as messages.
 */
import type { Worker } from 'node:worker_threads';
import {
  type EngineGenerateParams,
  type EngineOptions,
  PromptTooLongError,
  type SchedulerStats,
} from './engine';
import type { EngineInfo, FromEngineThread, ThreadError, ToEngineThread } from './engine-thread-protocol';
import type { GenerationResult, OnTokens } from './generate/generate';
import { spawnModuleWorker } from './threads';

/** What callers drive, in-process (Engine) or in a thread (EngineThread). */
export interface EngineHandle {
  readonly maxContext: number;
  readonly maxStages: number;
  generate(prompt: string, params: EngineGenerateParams, onTokens?: OnTokens): Promise<GenerationResult>;
  schedulerStats(): SchedulerStats;
  close(): Promise<void>;
}

interface Run {
  resolve: (r: GenerationResult) => void;
  reject: (e: Error) => void;
  onTokens?: OnTokens;
  onAdmitted?: () => void;
  ack: boolean;
}

export interface EngineThreadOptions {
  /**
   * Wait for each onTokens callback (its promise, when it returns one) before the generation goes on, as
   * an in-process Engine does: one message round trip per token event, so only for callers that slow
   * generations down on purpose (fault tests).
   */
  awaitTokens?: boolean;
}

/** The error the thread reported, as the in-process Engine would have thrown it. */
function rebuild(e: ThreadError): Error {
  if (e.name === 'PromptTooLongError') {
    const f = e.fields as { promptTokens: number; maxTokens: number; maxContext: number };
    return new PromptTooLongError(f.promptTokens, f.maxTokens, f.maxContext);
  }
  const err =
    e.name === 'RangeError' || e.name === 'SequenceTooLargeError'
      ? new RangeError(e.message)
      : new Error(e.message);
  err.name = e.name;
  return err;
}

export class EngineThread implements EngineHandle {
  private readonly runs = new Map<number, Run>();
  private nextId = 0;
  private stats: SchedulerStats;
  private closing?: Promise<void>;

  private constructor(
    private readonly worker: Worker,
    private readonly info: EngineInfo,
    stats: SchedulerStats,
    private readonly log: ((m: string) => void) | undefined,
    private readonly awaitTokens: boolean,
  ) {
    this.stats = stats;
    worker.on('message', (m: FromEngineThread) => this.receive(m));
    worker.on('error', (err) => this.failAll(err));
    worker.on('exit', (code) => this.failAll(new Error(`the engine thread exited (code ${code})`)));
  }

  static async open(
    packageDir: string,
    options: EngineOptions = {},
    threadOptions: EngineThreadOptions = {},
  ): Promise<EngineThread> {
    const worker = spawnModuleWorker(new URL('./engine-thread-worker.ts', import.meta.url));
    const { log, ...rest } = options;
    const opened = await new Promise<Extract<FromEngineThread, { type: 'opened' }>>((resolve, reject) => {
      const onMessage = (m: FromEngineThread) => {
        if (m.type === 'log') log?.(m.message);
        else if (m.type === 'opened') done(() => resolve(m));
        else if (m.type === 'open-error') done(() => reject(rebuild(m.error)));
      };
      const onExit = (code: number) =>
        done(() => reject(new Error(`the engine thread exited (code ${code}) while opening`)));
      const onError = (err: Error) => done(() => reject(err));
      const done = (then: () => void) => {
        worker.off('message', onMessage);
        worker.off('exit', onExit);
        worker.off('error', onError);
        then();
      };
      worker.on('message', onMessage);
      worker.on('exit', onExit);
      worker.on('error', onError);
      const msg: ToEngineThread = { type: 'open', packageDir, options: rest, logs: !!log };
      worker.postMessage(msg);
    }).catch(async (err) => {
      await worker.terminate();
      throw err;
    });
    return new EngineThread(worker, opened.info, opened.stats, log, !!threadOptions.awaitTokens);
  }

  get maxContext(): number {
    return this.info.maxContext;
  }

  get maxStages(): number {
    return this.info.maxStages;
  }

  get defaultDecoder() {
    return this.info.defaultDecoder;
  }

  /** The load the thread last reported (pushed on every admission and end, and every 200 ms while busy). */
  schedulerStats(): SchedulerStats {
    return this.stats;
  }

  generate(prompt: string, params: EngineGenerateParams, onTokens?: OnTokens): Promise<GenerationResult> {
    if (this.closing) return Promise.reject(new Error('engine closed'));
    const { signal, onAdmitted, ...rest } = params;
    const id = this.nextId++;
    return new Promise<GenerationResult>((resolve, reject) => {
      this.runs.set(id, { resolve, reject, onTokens, onAdmitted, ack: this.awaitTokens });
      const aborted = !!signal?.aborted;
      this.post({ type: 'generate', id, prompt, params: rest, ack: this.awaitTokens, aborted });
      if (signal && !aborted)
        signal.addEventListener('abort', () => this.post({ type: 'abort', id }), { once: true });
    });
  }

  private post(m: ToEngineThread): void {
    this.worker.postMessage(m);
  }

  private receive(m: FromEngineThread): void {
    switch (m.type) {
      case 'log':
        this.log?.(m.message);
        return;
      case 'stats':
        this.stats = m.stats;
        return;
      case 'admitted':
        this.runs.get(m.id)?.onAdmitted?.();
        return;
      case 'tokens': {
        const run = this.runs.get(m.id);
        const pending = run?.onTokens?.(m.event);
        if (run?.ack) void Promise.resolve(pending).finally(() => this.post({ type: 'ack', id: m.id }));
        return;
      }
      case 'result':
        this.runs.get(m.id)?.resolve(m.result);
        this.runs.delete(m.id);
        return;
      case 'error':
        this.runs.get(m.id)?.reject(rebuild(m.error));
        this.runs.delete(m.id);
        return;
      default:
        return;
    }
  }

  private failAll(err: Error): void {
    for (const run of this.runs.values()) run.reject(err);
    this.runs.clear();
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.worker.once('exit', () => resolve());
      this.worker.on('message', (m: FromEngineThread) => {
        if (m.type === 'closed') void this.worker.terminate();
      });
      this.post({ type: 'close' });
    });
    return this.closing;
  }
}
