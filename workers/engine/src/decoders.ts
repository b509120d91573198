import type { Decoder, DecoderName } from './decode/decoder';
import { createDecoder, type DecoderContext, type StageSplit } from './decode/index';
import { resolveSetup } from './decoder-setup';
import type { LoadedPackage } from './package';
import type { Device } from './runtime';

/** How a package's layers are laid out on devices; chosen at load time, never baked into the package. */
export interface DecoderPlan {
  /** One entry per pipeline stage ('cpu' | 'cuda:N' | 'webgpu'); default one 'cpu'. */
  devices?: Device[];
  /** Pipeline depth k for ppsd/spd (and EESD's default exit N/k); default devices.length, at least 2. */
  stages?: number;
  /** Early-exit layer E (default: the first stage boundary of the plan's split). */
  exitLayer?: number;
  /** ppsd/spd stage boundaries: equal modelled cost per stage (default) or equal layer counts. */
  split?: StageSplit;
  /** Rows PPSD's draft head scores: a frequency-ranked vocabulary subset (default defaultDraftRows). */
  draftRows?: number;
  /** ORT intra-op threads per stage (default 1: a CPU device is one core). */
  threadsPerStage?: number;
  /** EESD/DV draft length: fixed, or adaptive (default). */
  draftLength?: number | 'adaptive';
  maxSeqLen?: number;
  /** Fall back to CPU when a configured GPU provider is unavailable (logged). */
  allowCpuFallback?: boolean;
  log?: (message: string) => void;
}

/**
 * Builds one decoder over a loaded package according to the plan, with what calibration stored in the
 * package: the exit head at E (eesd, ppsd), the tuned skip set (dv), the fitted SPD drafter (spd).
 * Anything not stored falls back to its uncalibrated default (logit lens, default skip set, identity
 * drafter): still lossless, only less accepted.
 */
export async function openDecoder(
  name: DecoderName,
  pkg: LoadedPackage,
  plan: DecoderPlan,
): Promise<Decoder> {
  return createDecoder(name, await decoderContext(name, pkg, plan));
}

/**
 * What `createDecoder` needs for `name` under `plan`: resolved once (it reads calibration from the
 * package), then reused for every decoder of that name, e.g. one per batched sequence.
 */
export async function decoderContext(
  name: DecoderName,
  pkg: LoadedPackage,
  plan: DecoderPlan,
): Promise<DecoderContext> {
  const { model } = pkg;
  const N = model.config.nLayers;
  const devices = plan.devices?.length ? plan.devices : ['cpu' as Device];
  const k = Math.min(N, plan.stages ?? Math.max(2, devices.length));
  const ctx: DecoderContext = {
    model,
    stages: k,
    devices,
    threadsPerStage: plan.threadsPerStage ?? 1,
    draftLength: plan.draftLength,
    maxSeqLen: plan.maxSeqLen,
    allowCpuFallback: plan.allowCpuFallback,
    log: plan.log,
  };
  if (name === 'ar') {
    // One session over the whole model; on CPU it gets every core the plan names.
    return {
      ...ctx,
      threadsPerStage: devices[0] === 'cpu' ? (plan.threadsPerStage ?? 1) * devices.length : 1,
    };
  }
  // The same resolution `ppsd bench` measures: exit layer, stored head, draft vocabulary, skip set, drafter.
  const setup = await resolveSetup(pkg, k, plan.exitLayer, { split: plan.split, draftRows: plan.draftRows });
  plan.log?.(
    `${name}: k=${k}, stages [${setup.boundaries.join(', ')}], ${setup.exitHeadInfo}` +
      (name === 'ppsd' ? `, draft head ${setup.draftVocabInfo}` : '') +
      (name === 'spd' ? `, ${setup.spdDrafterInfo}` : '') +
      (name === 'dv' ? `, skip set ${setup.skipSet ? 'tuned' : 'default'}` : ''),
  );
  return {
    ...ctx,
    exitLayer: setup.exitLayer,
    exitHead: setup.exitHead,
    draftVocab: setup.draftVocab,
    split: setup.split,
    skipSet: setup.skipSet,
    spdDrafter: setup.spdDrafter,
  };
}
