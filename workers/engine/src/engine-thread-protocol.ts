/**
 * Messages between EngineThread (the caller's side) and engine-thread-worker.ts (the thread that owns the
 * Engine). Everything here is structured-clone data; functions (log, onTokens, onAdmitted) and the abort
 * signal are replaced by messages.
 */
import type { EngineGenerateParams, EngineOptions, SchedulerStats } from './engine';
import type { GenerationResult, TokenEvent } from './generate/generate';

export type ThreadEngineOptions = Omit<EngineOptions, 'log'>;
export type ThreadGenerateParams = Omit<EngineGenerateParams, 'signal' | 'onAdmitted'>;

/** What the caller can read of the engine without a round trip. */
export interface EngineInfo {
  maxContext: number;
  maxStages: number;
  defaultDecoder: EngineOptions['decoder'] & string;
}

export interface ThreadError {
  name: string;
  message: string;
  /** Own enumerable fields of the error (PromptTooLongError's counts). */
  fields?: Record<string, unknown>;
}

export type ToEngineThread =
  | { type: 'open'; packageDir: string; options: ThreadEngineOptions; logs: boolean }
  /** `aborted`: the caller's signal had fired already (the generation must not start at all). */
  | {
      type: 'generate';
      id: number;
      prompt: string;
      params: ThreadGenerateParams;
      ack: boolean;
      aborted: boolean;
    }
  | { type: 'abort'; id: number }
  /** The caller has handled token event `id`'s latest batch (only when the generation asked for acks). */
  | { type: 'ack'; id: number }
  | { type: 'close' };

export type FromEngineThread =
  | { type: 'opened'; info: EngineInfo; stats: SchedulerStats }
  | { type: 'open-error'; error: ThreadError }
  | { type: 'log'; message: string }
  | { type: 'admitted'; id: number }
  | { type: 'tokens'; id: number; event: TokenEvent }
  | { type: 'result'; id: number; result: GenerationResult }
  | { type: 'error'; id: number; error: ThreadError }
  | { type: 'stats'; stats: SchedulerStats }
  | { type: 'closed' };
