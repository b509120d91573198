import type { Decoder, DecoderName } from './decode/decoder';
import { createDecoder, type DecoderContext, type DecoderPlan } from './decode/index';
import { resolveSetup } from './decoder-setup';
import type { LoadedPackage } from './package';
import type { Device } from './runtime';

export type { DecoderContext, DecoderPlan } from './decode/plan';

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
 * The plan resolved for `name` (decode/plan.ts DecoderContext, what `createDecoder` takes): the plan's
 * defaults filled in and what calibration stored in the package. Resolved once (it reads the package),
 * then reused for every decoder of that name, e.g. one per batched sequence.
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
