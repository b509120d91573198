/**
 * One entry point for every decoder: `createDecoder(name, ctx)` builds the stages a decoder needs from
 * a resolved plan (`DecoderContext`, plan.ts) and returns it. All decoders are lossless (greedy:
 * exactly AR's tokens; sampling: AR's distribution).
 *   ar    one full-model stage, one forward per token (decode/ar.ts)
 *   eesd  early-exit draft [0, E) + exit head, verify [E, N) over the block (eesd.ts, block.ts)
 *   dv    layer-skipping draft with adaptive draft exiting, full-model verify (dv.ts, block.ts)
 *   ppsd  k-stage verify-while-draft pipeline, one Worker per stage, exit head after stage 1 (ppsd.ts)
 *   spd   the same pipeline with the multi-depth feature drafter on the main thread (spd.ts)
 */
import type { StageSpec } from '../model/stage';
import { createOrtStage, parseDevice } from '../runtime';
import { ArDecoder } from './ar';
import {
  AdaptiveDraftLength,
  BlockDecoder,
  ConfidenceDraftExit,
  type DraftLengthPolicy,
  FixedDraftLength,
} from './block';
import { DECODER_NAMES, type Decoder, type DecoderName } from './decoder';
import { DvSpeculator, defaultSkipSet } from './dv';
import { EesdSpeculator } from './eesd';
import { stageBoundaries } from './pipeline';
import type { DecoderContext } from './plan';
import { createPpsdDecoder } from './ppsd';
import { createSpdDecoder } from './spd';

export async function createDecoder(name: DecoderName, ctx: DecoderContext): Promise<Decoder> {
  const { model } = ctx;
  const N = model.config.nLayers;
  const k = ctx.stages ?? 2;
  const exitLayer = ctx.exitHead?.afterLayer ?? ctx.exitLayer;
  const makeStage =
    ctx.createStage ??
    ((spec: StageSpec) =>
      createOrtStage(model, spec, {
        device: parseDevice(ctx.devices?.[0] ?? 'cpu'),
        threads: ctx.threadsPerStage ?? 1,
        maxSeqLen: ctx.maxSeqLen,
        accuracyLevel: ctx.accuracyLevel,
        allowCpuFallback: ctx.allowCpuFallback ?? !!ctx.log,
        log: ctx.log,
      }));
  const pipeline = pipelineSetup(ctx);

  switch (name) {
    case 'ar':
      return new ArDecoder([await makeStage({ firstLayer: 0, endLayer: N })]);
    case 'eesd': {
      const E = exitLayer ?? stageBoundaries(N, Math.min(k, N), undefined)[1];
      const [draftSpec, verifySpec] = EesdSpeculator.specs(model, E, ctx.exitHead);
      const [draft, verify] = await Promise.all([makeStage(draftSpec), makeStage(verifySpec)]);
      const policy = lengthPolicy(ctx.draftLength, () => new AdaptiveDraftLength());
      return new BlockDecoder(new EesdSpeculator(draft, verify, model), {
        name: 'eesd',
        policy,
        controlledAcceptance: ctx.controlledAcceptance,
      });
    }
    case 'dv': {
      const skip = ctx.skipSet ?? defaultSkipSet(N);
      const [target, draft] = await Promise.all([
        makeStage({ firstLayer: 0, endLayer: N }),
        makeStage({ firstLayer: 0, endLayer: N, skip }),
      ]);
      const policy = lengthPolicy(ctx.draftLength, () => new ConfidenceDraftExit());
      return new BlockDecoder(new DvSpeculator([target], draft, model), {
        name: 'dv',
        policy,
        controlledAcceptance: ctx.controlledAcceptance,
      });
    }
    case 'ppsd':
      return createPpsdDecoder(model, pipeline);
    case 'spd':
      return createSpdDecoder(model, pipeline);
    default:
      throw new Error(`unknown decoder '${name as string}' (expected one of ${DECODER_NAMES.join(', ')})`);
  }
}

/** What the pipelines read of a context (PipelineSetup and heads), with k and E settled. */
export function pipelineSetup(ctx: DecoderContext) {
  return { ...ctx, stages: ctx.stages ?? 2, exitLayer: ctx.exitHead?.afterLayer ?? ctx.exitLayer };
}

function lengthPolicy(draftLength: number | 'adaptive' | undefined, adaptive: () => DraftLengthPolicy) {
  if (draftLength === undefined || draftLength === 'adaptive') return adaptive;
  const gamma = draftLength;
  new FixedDraftLength(gamma); // validates now rather than at the first generation
  return () => new FixedDraftLength(gamma);
}

export { AdaptiveDraftLength, BlockDecoder, ConfidenceDraftExit, FixedDraftLength } from './block';
export * from './decoder';
export { DEFAULT_VOCAB_CORPUS, defaultDraftRows, draftVocabFor, frequencyRankedVocab } from './draft-vocab';
export { DvSpeculator, defaultSkipSet } from './dv';
export { EesdSpeculator } from './eesd';
export {
  balancedBoundaries,
  forwardMacs,
  layerMacs,
  PipelineDecoder,
  planBoundaries,
  stageBoundaries,
  stageMacs,
} from './pipeline';
export type { DecoderContext, DecoderPlan, PipelineSetup, StageSplit, StageWorkersOptions } from './plan';
export { createPpsdDecoder, planPpsd } from './ppsd';
export { createSpdDecoder } from './spd';
export {
  identitySpdDrafter,
  loadSpdDrafter,
  SpdDrafterSession,
  type SpdDrafterWeights,
  saveSpdDrafter,
  spdDraftHidden,
  spdFeatureLags,
} from './spd-drafter';
export { draftFrom, judge, residual } from './spec-rule';
