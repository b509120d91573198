/**
 * One entry point for every decoder: `createDecoder(name, ctx)` builds the stages a decoder needs and
 * returns it. All decoders are lossless (greedy: exactly AR's tokens; sampling: AR's distribution).
 *   ar    one full-model stage, one forward per token (decode/ar.ts)
 *   eesd  early-exit draft [0, E) + exit head, verify [E, N) over the block (eesd.ts, block.ts)
 *   dv    layer-skipping draft with adaptive draft exiting, full-model verify (dv.ts, block.ts)
 *   ppsd  k-stage verify-while-draft pipeline, one Worker per stage, exit head after stage 1 (ppsd.ts)
 *   spd   the same pipeline with the multi-depth feature drafter on the main thread (spd.ts)
 */
import type { AccuracyLevel } from '../graph/weights';
import type { ExitHead, LlamaModel, SkipSet } from '../model/llama';
import type { Stage, StageSpec } from '../model/stage';
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
import { type StageSplit, stageBoundaries } from './pipeline';
import { createPpsdDecoder } from './ppsd';
import { createSpdDecoder } from './spd';
import type { SpdDrafterWeights } from './spd-drafter';
import type { ControlledAcceptance } from './spec-rule';

export interface DecoderContext {
  model: LlamaModel;
  /** k, pipeline stages (ppsd, spd; default 2). Also picks EESD's default exit layer. */
  stages?: number;
  /** E, the layer the draft exits after (default round(N / k)); an exit head's afterLayer wins. */
  exitLayer?: number;
  /** Early-exit head at E (default: the plain logit lens). */
  exitHead?: ExitHead;
  /** PPSD's cheap draft head: the token ids its exit head scores (default: the whole vocabulary). */
  draftVocab?: Int32Array;
  /** Pipeline boundaries when E is not fixed: equal modelled cost per stage (default) or equal layer counts. */
  split?: StageSplit;
  /** PPSD k = 2: allow a split inside a layer when it balances better (default true; see pipeline.ts sublayerSplit). */
  sublayer?: boolean;
  /** DV's skip set (default: both sub-layers of every second inner layer). */
  skipSet?: SkipSet;
  /** SPD's fitted drafter (default: identity on the deepest in-flight feature). */
  spdDrafter?: SpdDrafterWeights;
  /** EESD / DV block length: fixed, or adaptive (EESD: grow/shrink; DV: confidence exit). */
  draftLength?: number | 'adaptive';
  /** One device per pipeline stage ('cpu' default); main-thread decoders use the first. */
  devices?: string[];
  /** intra-op threads per stage session (default 1: one core per stage). */
  threadsPerStage?: number;
  /** MatMulNBits accuracy_level of q8/q4 matrices (graph/weights.ts; default 4: int8 activations). */
  accuracyLevel?: AccuracyLevel;
  maxSeqLen?: number;
  /** Benchmarks on random-weight models only; results must be labelled as controlled acceptance. */
  controlledAcceptance?: ControlledAcceptance;
  /** Stage factory for the main-thread decoders (ar, eesd, dv); default: an ORT session per stage. */
  createStage?: (spec: StageSpec) => Promise<Stage>;
  /** Retry on CPU when a stage's device is unavailable (default: when `log` is given). */
  allowCpuFallback?: boolean;
  /** Where EP fallbacks are reported. */
  log?: (msg: string) => void;
}

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
  const pipeline = {
    stages: k,
    exitLayer,
    split: ctx.split,
    devices: ctx.devices,
    threadsPerStage: ctx.threadsPerStage,
    accuracyLevel: ctx.accuracyLevel,
    maxSeqLen: ctx.maxSeqLen,
    controlledAcceptance: ctx.controlledAcceptance,
    allowCpuFallback: ctx.allowCpuFallback,
    log: ctx.log,
  };

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
      return createPpsdDecoder(model, {
        ...pipeline,
        exitHead: ctx.exitHead,
        draftVocab: ctx.draftVocab,
        sublayer: ctx.sublayer,
      });
    case 'spd':
      return createSpdDecoder(model, { ...pipeline, drafter: ctx.spdDrafter });
    default:
      throw new Error(`unknown decoder '${name as string}' (expected one of ${DECODER_NAMES.join(', ')})`);
  }
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
  type StageSplit,
  stageBoundaries,
  stageMacs,
} from './pipeline';
export { createPpsdDecoder, type PipelineSetup } from './ppsd';
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
