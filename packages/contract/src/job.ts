/** The BullMQ job payload: everything a worker needs to run one generation, fixed at admission. */

import type { DecoderName } from '@ppsd/engine/decoder';

// The decoder names are the engine's; this light entry point loads no inference code.
export { DECODER_NAMES, type DecoderName } from '@ppsd/engine/decoder';
export { MAX_TOP_LOGPROBS, type TokenLogprob, type TopLogprob } from '@ppsd/engine/logprobs';

/**
 * `speculation` request extension: 'auto' = the worker's default decoder, 'off' = plain AR, or a decoder
 * with its pipeline depth (`stages`: ppsd, spd) or fixed draft block length (`draftLength`: eesd, dv).
 */
export type Speculation = 'auto' | 'off' | { decoder: DecoderName; stages?: number; draftLength?: number };

/** Decoders `stages` applies to, and decoders `draftLength` applies to (anything else is refused). */
export const PIPELINE_DECODERS: readonly DecoderName[] = ['ppsd', 'spd'];
export const BLOCK_DECODERS: readonly DecoderName[] = ['eesd', 'dv'];

export interface SamplingParams {
  maxTokens: number;
  temperature: number; // 0 = greedy
  topP: number;
  /** Always set: the API draws one when the client gives none, so a retried attempt reproduces the same text. */
  seed: number;
  stop: string[];
  /**
   * Logit processors, applied to the verifying model's distribution (OpenAI semantics): token id (as a
   * decimal string) -> bias added to its logit; penalties subtracted for tokens in the completion so far.
   */
  logitBias?: Record<string, number>;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Report each token's raw log-probability and this many most probable alternatives (0..20). */
  logprobs?: number;
}

export type JobKind = 'completion' | 'chat' | 'summarize';

export interface GenerationJob {
  id: string;
  tenant: string;
  model: string;
  kind: JobKind;
  /** The exact prompt text the engine sees (chat/summarize already rendered by ./prompts). */
  prompt: string;
  promptTokens: number;
  params: SamplingParams;
  speculation: Speculation;
  /** Tokens reserved against the tenant's quota at admission; settled when the attempt ends. */
  reservedTokens: number;
  enqueuedAt: number; // ms epoch
}

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error';

/** The BullMQ return value of a finished job (also the `done` event's payload). */
export interface JobResult {
  text: string;
  finishReason: FinishReason;
  usage: TokenUsage;
  speculation: SpeculationSummary;
}

export interface TokenUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface SpeculationSummary {
  decoder: DecoderName;
  draftsProposed: number; // draft tokens proposed
  draftsAccepted: number; // draft tokens accepted
  acceptanceRate: number; // accepted / proposed (0 when none proposed)
  meanAcceptedLength: number; // tokens emitted per verification
  stages?: { busyMs: number; idleMs: number }[];
  /** ppsd / spd: the pipeline depth the attempt ran with. */
  pipelineStages?: number;
  /** eesd / dv: the draft block length it ran with (a fixed γ, or 'adaptive'). */
  draftLength?: number | 'adaptive';
}
