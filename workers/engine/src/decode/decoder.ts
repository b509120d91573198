import type { Sampler } from './sampling';

export type DecoderName = 'ar' | 'eesd' | 'dv' | 'ppsd' | 'spd';

/** What one generation asks of a decoder. The prompt already includes BOS. */
export interface DecodeRequest {
  prompt: Int32Array;
  /** Upper bound on tokens to produce; a decoder may stop at it exactly. */
  maxTokens: number;
  sampler: Sampler;
  signal?: AbortSignal;
  /**
   * Live stats: when given, the decoder counts into this object as it goes (it also returns it), so a
   * caller that stops the generator early (EOS, stop sequence) still has the numbers.
   */
  stats?: SpeculationStats;
  /**
   * Benchmarks on random-weight models only (results must be labelled as such): speculative decoders
   * replace each draft by the known AR token with probability alpha, by a wrong token otherwise.
   * Overrides the decoder's own setting for this generation; ignored by AR.
   */
  controlledAcceptance?: ControlledAcceptance;
  /** EESD / DV: a fixed draft block length γ for this generation instead of the decoder's policy. */
  draftLength?: number;
}

/**
 * Controlled acceptance: the drafter still runs in full, but its token is replaced by the AR token with
 * probability alpha and by a different token otherwise. `arTokens` is the AR completion (without the
 * prompt) of the same prompt, so under greedy decoding the acceptance rate converges to alpha. Still
 * lossless under sampling (the forced token's draft distribution is its one-hot).
 */
export interface ControlledAcceptance {
  alpha: number;
  seed: number;
  arTokens: number[];
}

/** Per-stage time accounting of a pipelined decoder. */
export interface StageTime {
  busyMs: number; // inside run()
  idleMs: number; // waiting for input while the generation was running
}

export interface SpeculationStats {
  decoder: DecoderName;
  draftTokensProposed: number;
  draftTokensAccepted: number;
  /**
   * Drafts computed but never judged, because an earlier draft of the same block (or pipeline) was
   * rejected first. `draftTokensProposed` counts judged drafts only, so acceptance rate = alpha.
   */
  draftTokensDiscarded?: number;
  /** Verification steps (each emits accepted drafts plus one token from the full model). */
  verifications: number;
  /** Tokens emitted (verified). */
  tokens: number;
  stages?: StageTime[];
  /** EESD / DV: the block length this generation ran with (a fixed γ, or the adaptive policy). */
  draftLength?: number | 'adaptive';
  /** Pipelines: the decode loop's ticks (prefill excluded), their wall time, and per tick the slowest stage's run. */
  pipeline?: PipelineTickStats;
}

/** Where a pipeline's decode-loop time went (prefill excluded). */
export interface PipelineTickStats {
  ticks: number;
  /** Wall time of the decode loop. */
  tickMs: number;
  /** Sum over ticks of the slowest stage's busy time in that tick (the compute on the critical path). */
  computeMs: number;
  /** The plan: layer boundaries, how they were chosen, draft-head rows, modelled cost per stage (MACs). */
  plan?: PipelinePlan;
}

export interface PipelinePlan {
  boundaries: number[];
  split: 'balanced' | 'equal' | 'fixed';
  /** Rows the stage-1 draft head scores (the vocabulary, or a frequency-ranked subset); absent for SPD. */
  draftRows?: number;
  /** Modelled multiply-adds per token of each stage (layers + heads). */
  stageMacs: number[];
  /** The same model's cost of a full forward (AR), for the plan's ideal speedup. */
  forwardMacs?: number;
  /** k = 2 sub-layer split: this layer's attention ends stage 1, its MLP starts stage 2 (b[1] = it). */
  splitLayer?: number;
}

export const acceptanceRate = (s: SpeculationStats): number =>
  s.draftTokensProposed === 0 ? 0 : s.draftTokensAccepted / s.draftTokensProposed;

/** Tokens emitted per verification step: 1 for AR, up to draft length + 1 for block drafters. */
export const meanAcceptedLength = (s: SpeculationStats): number =>
  s.verifications === 0 ? 0 : s.tokens / s.verifications;

/**
 * A decoding strategy over the model's stages. `decode` yields verified tokens in order, in batches
 * (a speculative step can verify several at once), and returns its stats. Every decoder is lossless:
 * under greedy sampling it yields exactly AR's tokens; under sampling it follows the speculative-sampling
 * rule so the distribution equals AR's. The consumer may stop early (EOS, stop sequence, abort) by
 * calling `return()` on the generator; the decoder must then leave its stages reusable.
 * A decoder serves one generation at a time.
 */
export interface Decoder {
  readonly name: DecoderName;
  decode(request: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void>;
  close(): Promise<void>;
}

export const DECODER_NAMES: readonly DecoderName[] = ['ar', 'eesd', 'dv', 'ppsd', 'spd'];

/** The stats object a decoder counts into: the request's own (zeroed) or a fresh one. */
export function startStats(request: DecodeRequest, decoder: DecoderName): SpeculationStats {
  const stats = request.stats ?? ({} as SpeculationStats);
  Object.assign(stats, {
    decoder,
    draftTokensProposed: 0,
    draftTokensAccepted: 0,
    draftTokensDiscarded: 0,
    verifications: 0,
    tokens: 0,
    stages: undefined,
    draftLength: undefined,
  });
  return stats;
}

/**
 * One generation at a time per decoder (it owns KV caches) and none after close(): the guard every
 * stateful decoder wraps its generator in.
 */
export class SingleGeneration {
  private active = false;

  async *run<R>(
    name: string,
    isClosed: () => boolean,
    generation: () => AsyncGenerator<number[], R, void>,
  ): AsyncGenerator<number[], R, void> {
    if (isClosed()) throw new Error(`${name} decoder is closed`);
    if (this.active) throw new Error(`${name} decoder serves one generation at a time`);
    this.active = true;
    try {
      return yield* generation();
    } finally {
      this.active = false;
    }
  }
}
