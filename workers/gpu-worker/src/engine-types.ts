/**
 * The slice of the engine facade (`Engine` from @ppsd/engine) the worker drives, and the draft numbers
 * it meters. Typed from the engine's own types, so the two cannot drift apart.
 */
import {
  acceptanceRate,
  type Engine,
  meanAcceptedLength,
  type SpeculationStats,
  type TokenEvent,
} from '@ppsd/engine';

export type WorkerTokenEvent = TokenEvent;

/** What the job runner needs of an engine: generate and close (tests wrap a real Engine to inject faults). */
export type WorkerEngine = Pick<Engine, 'generate' | 'close'>;

/** Draft statistics of one attempt, as usage records and metrics count them. */
export interface DraftStats {
  drafts: number; // verification rounds that had a draft
  draftTokens: number; // draft tokens proposed
  accepted: number; // draft tokens accepted
  acceptanceRate: number;
  meanAcceptedLength: number;
  stages?: { busyMs: number; idleMs: number }[];
}

/** Stats of an attempt; one that ended before the engine reported any counts as no drafting. */
export function draftStats(stats: SpeculationStats | undefined): DraftStats {
  if (!stats) return { drafts: 0, draftTokens: 0, accepted: 0, acceptanceRate: 0, meanAcceptedLength: 0 };
  return {
    drafts: stats.draftTokensProposed > 0 ? stats.verifications : 0,
    draftTokens: stats.draftTokensProposed,
    accepted: stats.draftTokensAccepted,
    acceptanceRate: acceptanceRate(stats),
    meanAcceptedLength: meanAcceptedLength(stats),
    stages: stats.stages,
  };
}
