/** Shared helpers for the decoder tests (not a test file itself). */
import { resolve } from 'node:path';
import type { DecodeRequest, Decoder, SpeculationStats } from '../../workers/engine/src/decode/decoder';
import { Sampler } from '../../workers/engine/src/decode/sampling';
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';

export const STORIES260K = resolve(import.meta.dirname, '../../../shared/models/stories260K/stories260K.bin');

export const greedy = () => new Sampler({ temperature: 0, topP: 1, seed: 0 });

/**
 * A tiny random model whose greedy continuations vary (std 0.3: the default 0.02 gives near-uniform
 * logits and constant outputs) and whose logit-lens drafts are often wrong, so rejections happen.
 */
export function tinyModel(
  opts: { vocabSize?: number; nLayers?: number; seed?: number; dim?: number } = {},
): LlamaModel {
  const config = llamaConfig({
    dim: opts.dim ?? 32,
    nLayers: opts.nLayers ?? 4,
    nHeads: 2,
    vocabSize: opts.vocabSize ?? 16,
    maxSeqLen: 96,
  });
  return randomLlama(config, opts.seed ?? 3, { std: 0.3 });
}

export interface Generation {
  tokens: number[];
  stats: SpeculationStats;
}

/** A generation the consumer stopped early (generator return(): no stats come back). */
export interface StoppedGeneration {
  tokens: number[];
}

/** Runs one generation to the end (greedy unless `extra.sampler` says otherwise). */
export async function generate(
  decoder: Decoder,
  prompt: number[],
  maxTokens: number,
  extra: Partial<DecodeRequest> = {},
): Promise<Generation> {
  const it = decoder.decode({ prompt: Int32Array.from(prompt), maxTokens, sampler: greedy(), ...extra });
  const tokens: number[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) return { tokens, stats: r.value };
    tokens.push(...r.value);
  }
}

/** Consumes `stopAfter` or more tokens, then stops the generation the way a consumer does (return()). */
export async function generateAndStop(
  decoder: Decoder,
  prompt: number[],
  maxTokens: number,
  stopAfter: number,
): Promise<StoppedGeneration> {
  const it = decoder.decode({ prompt: Int32Array.from(prompt), maxTokens, sampler: greedy() });
  const tokens: number[] = [];
  while (tokens.length < stopAfter) {
    const r = await it.next();
    if (r.done) break;
    tokens.push(...r.value);
  }
  await it.return(undefined as never);
  return { tokens };
}

/** The bookkeeping every decoder's stats must satisfy for a complete generation. */
export function checkStats(g: Generation, stages?: number): string[] {
  const s = g.stats;
  const problems: string[] = [];
  if (s.tokens !== g.tokens.length) problems.push(`tokens ${s.tokens} != emitted ${g.tokens.length}`);
  if (s.draftTokensAccepted > s.draftTokensProposed) problems.push('accepted > proposed');
  if (s.tokens !== s.draftTokensAccepted + s.verifications) {
    problems.push(
      `tokens ${s.tokens} != accepted ${s.draftTokensAccepted} + verifications ${s.verifications}`,
    );
  }
  if ((s.draftTokensDiscarded ?? 0) < 0) problems.push('negative discarded');
  if (stages !== undefined) {
    if (s.stages?.length !== stages)
      problems.push(`stage times for ${s.stages?.length} stages, expected ${stages}`);
    for (const t of s.stages ?? [])
      if (!(t.busyMs > 0 && t.idleMs >= 0)) problems.push(`bad stage time ${JSON.stringify(t)}`);
  }
  return problems;
}
