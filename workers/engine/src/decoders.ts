import path from 'node:path';
import type { Decoder, DecoderName } from './decode/decoder';
import { exitHeadFor } from './decode/heads';
import {
  createDecoder,
  type DecoderContext,
  defaultDraftRows,
  draftVocabFor,
  planBoundaries,
  type StageSplit,
  stageBoundaries,
} from './decode/index';
import { loadSpdDrafter } from './decode/spd-drafter';
import type { SkipSet } from './model/llama';
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
  const { model, manifest, dir } = pkg;
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
  const equalExit = plan.exitLayer ?? stageBoundaries(N, k, undefined)[1];
  const draftRows = Math.min(
    plan.draftRows ?? defaultDraftRows(model.config.vocabSize),
    model.config.vocabSize,
  );
  /** E of the pipeline plan: the first boundary of the balanced (or equal) split unless fixed. */
  const pipelineExit = (rows: number) =>
    plan.exitLayer ?? planBoundaries(model.config, k, { draftRows: rows, split: plan.split })[1];
  switch (name) {
    case 'ar':
      // One session over the whole model; on CPU it gets every core the plan names.
      return createDecoder('ar', {
        ...ctx,
        threadsPerStage: devices[0] === 'cpu' ? (plan.threadsPerStage ?? 1) * devices.length : 1,
      });
    case 'eesd':
      return createDecoder(name, {
        ...ctx,
        exitLayer: equalExit,
        exitHead: await exitHeadFor(dir, manifest, model, equalExit),
      });
    case 'ppsd': {
      const exitLayer = pipelineExit(draftRows);
      const { vocab } = await draftVocabFor(pkg, draftRows);
      return createDecoder(name, {
        ...ctx,
        exitLayer,
        exitHead: await exitHeadFor(dir, manifest, model, exitLayer),
        draftVocab: vocab,
      });
    }
    case 'dv':
      return createDecoder('dv', { ...ctx, skipSet: storedSkipSet(manifest.skipSet) });
    case 'spd': {
      const exitLayer = pipelineExit(0);
      const stored = manifest.drafters?.spd as
        | { file: string; stages?: number; exitLayer?: number }
        | undefined;
      const fits = stored && (stored.stages ?? k) === k && (stored.exitLayer ?? exitLayer) === exitLayer;
      if (stored && !fits) {
        plan.log?.(
          `the package's SPD drafter was fitted for ${stored.stages} stages / exit ${stored.exitLayer}; ` +
            `this plan has ${k} / ${exitLayer}: using the identity drafter`,
        );
      }
      const drafter = fits ? await loadSpdDrafter(path.join(dir, stored.file)) : undefined;
      return createDecoder('spd', { ...ctx, exitLayer, spdDrafter: drafter });
    }
  }
}

function storedSkipSet(stored: Record<string, unknown> | undefined): SkipSet | undefined {
  if (!stored) return undefined;
  const { attention, mlp } = stored as Partial<SkipSet>;
  if (!Array.isArray(attention) || !Array.isArray(mlp))
    throw new Error('package skipSet must list attention and mlp layers');
  return { attention, mlp };
}
