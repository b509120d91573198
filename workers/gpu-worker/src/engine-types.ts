/**
 * The slice of the engine facade (`Engine` from @ppsd/engine, docs/ENGINE-API.md) the worker drives.
 * Kept structural so the job runner depends on behaviour, not on the engine's internals.
 */
import type { DecoderName } from '@ppsd/contract';

export interface WorkerTokenEvent {
  /** Index of ids[0] in the completion. */
  index: number;
  ids: number[];
  /** UTF-8-safe text delta for these ids. */
  text: string;
}

export interface WorkerGenerateParams {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  stop: string[];
  decoder?: DecoderName;
  signal?: AbortSignal;
}

export interface WorkerGenerationResult {
  text: string;
  promptTokens: number;
  completionTokens: number;
  finishReason: 'stop' | 'length' | 'cancelled';
  stats?: unknown;
  timings?: unknown;
}

export interface WorkerEngine {
  generate(
    prompt: string,
    params: WorkerGenerateParams,
    onTokens?: (ev: WorkerTokenEvent) => void | Promise<void>,
  ): Promise<WorkerGenerationResult>;
  close(): Promise<void>;
}

/** Draft statistics in whatever shape the engine reports them, normalised for usage and metrics. */
export interface DraftStats {
  drafts: number; // verification rounds that had a draft
  draftTokens: number; // draft tokens proposed
  accepted: number; // draft tokens accepted
  meanAcceptedLength: number;
  stages?: { busyMs: number; idleMs: number }[];
}

export function normalizeStats(stats: unknown, completionTokens: number): DraftStats {
  const s = (stats ?? {}) as Record<string, unknown>;
  const num = (...names: string[]): number => {
    for (const n of names) {
      const v = s[n];
      if (typeof v === 'number' && Number.isFinite(v)) return v;
    }
    return 0;
  };
  const draftTokens = num('draftTokens', 'draftTokensProposed', 'draftsProposed', 'proposed');
  const accepted = num('acceptedTokens', 'draftTokensAccepted', 'draftsAccepted', 'accepted');
  // Engine SpeculationStats: verification steps; a draft round is a verification that had draft tokens.
  const verifications = num('verifications', 'drafts', 'numDrafts', 'rounds');
  const drafts = draftTokens > 0 ? verifications : 0;
  const tokens = num('tokens') || completionTokens;
  const meanAcceptedLength =
    num('meanAcceptedLength') || (verifications > 0 ? tokens / verifications : tokens > 0 ? 1 : 0);
  const stages = Array.isArray(s.stages) ? (s.stages as { busyMs: number; idleMs: number }[]) : undefined;
  return { drafts, draftTokens, accepted, meanAcceptedLength, stages };
}
