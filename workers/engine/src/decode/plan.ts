/**
 * The one description of a decoder's plan. `DecoderPlan` is what a user of the engine or the CLI
 * chooses; `DecoderContext` is that plan resolved against a package (decoders.ts `decoderContext`: the
 * model and its calibration artifacts), which `createDecoder` builds from. The pipelines and their stage
 * workers take subsets of it (`PipelineSetup`, `StageWorkersOptions`). Each field is documented here once.
 */
import type { AccuracyLevel } from '../graph/weights';
import type { ExitHead, LlamaModel, SkipSet } from '../model/llama';
import type { Stage, StageSpec } from '../model/stage';
import type { Device } from '../runtime/device';
import type { SpdDrafterWeights } from './spd-drafter';
import type { ControlledAcceptance } from './spec-rule';

/** How a plan's pipeline boundaries are chosen: equal modelled cost per stage (default), or equal layer counts. */
export type StageSplit = 'balanced' | 'equal';

/** How a package's layers are laid out on devices; chosen at load time, never baked into the package. */
export interface DecoderPlan {
  /**
   * One device per pipeline stage ('cpu' | 'cuda:N' | 'webgpu'; default one 'cpu'). The main-thread
   * decoders (ar, eesd, dv) run on the first; AR on CPU gets the cores of all of them (decoderContext).
   */
  devices?: Device[];
  /**
   * k, the pipeline depth of ppsd / spd; also picks EESD's default exit layer (N / k). Default: the
   * number of devices, at least 2, at most N (decoderContext); 2 when createDecoder is called directly.
   */
  stages?: number;
  /**
   * E, the layer the draft exits after (stage 1 ends there). Default: the stored exit head with the best
   * expected speedup, else the first boundary of the plan's split (decoderContext); a given `exitHead`'s
   * afterLayer wins over it.
   */
  exitLayer?: number;
  /** ppsd / spd stage boundaries when E is not fixed: equal modelled cost per stage (default) or equal layer counts. */
  split?: StageSplit;
  /**
   * Rows PPSD's draft head scores: a frequency-ranked vocabulary subset (default defaultDraftRows;
   * at least the vocabulary: the full head). decoderContext resolves it into `draftVocab`.
   */
  draftRows?: number;
  /** ORT intra-op threads per stage session (default 1: a CPU device is one core). */
  threadsPerStage?: number;
  /** EESD / DV block length: fixed, or adaptive (default; EESD: grow / shrink, DV: confidence exit). */
  draftLength?: number | 'adaptive';
  /** Longest context of every stage: KV cache and rotary-table rows (default the model's maxSeqLen). */
  maxSeqLen?: number;
  /** Retry on CPU when a stage's device (a GPU provider) is unavailable (default: when `log` is given). */
  allowCpuFallback?: boolean;
  /** Where the resolved plan and EP fallbacks are reported. */
  log?: (message: string) => void;
}

/**
 * A plan resolved for one decoder: `createDecoder`'s input. decoderContext (decoders.ts) fills in the
 * defaults of the plan and what the package stores; a field left out falls back to its uncalibrated
 * default (logit lens, default skip set, identity drafter): still lossless, only less accepted.
 */
export interface DecoderContext extends DecoderPlan {
  model: LlamaModel;
  // ---- what resolution reads from the package (ppsd calibrate / tune-skip stored it)
  /** Early-exit head at E (default: the plain logit lens). */
  exitHead?: ExitHead;
  /** PPSD's cheap draft head: the token ids its exit head scores (default: the whole vocabulary). */
  draftVocab?: Int32Array;
  /** DV's skip set (default: both sub-layers of every second inner layer). */
  skipSet?: SkipSet;
  /** SPD's fitted drafter (default: identity on the deepest in-flight feature). */
  spdDrafter?: SpdDrafterWeights;
  // ---- set only by direct callers of createDecoder (benchmarks, tests, the engine's scheduler)
  /**
   * PPSD, k = 2, balanced split, logit-lens exit, E not fixed: split inside a layer (its attention in
   * stage 1, its MLP in stage 2) when that balances the stages better (default true; pipeline.ts
   * sublayerSplit).
   */
  sublayer?: boolean;
  /** MatMulNBits accuracy_level of q8/q4 matrices (graph/weights.ts; default 4: int8 activations). */
  accuracyLevel?: AccuracyLevel;
  /** Benchmarks on random-weight models only; results must be labelled as controlled acceptance. */
  controlledAcceptance?: ControlledAcceptance;
  /** Stage factory for the main-thread decoders (ar, eesd, dv); default: an ORT session per stage. */
  createStage?: (spec: StageSpec) => Promise<Stage>;
}

/** What a pipeline's stage Workers are started with. */
export type StageWorkersOptions = Pick<
  DecoderContext,
  'devices' | 'threadsPerStage' | 'maxSeqLen' | 'accuracyLevel' | 'allowCpuFallback' | 'log'
>;

/** What both pipelines (createPpsdDecoder, createSpdDecoder) read of the plan. */
export type PipelineSetup = StageWorkersOptions &
  Pick<DecoderContext, 'stages' | 'exitLayer' | 'split' | 'controlledAcceptance'>;
