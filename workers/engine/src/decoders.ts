import { ArDecoder } from './decode/ar';
import type { Decoder, DecoderName } from './decode/decoder';
import type { LoadedPackage } from './package';
import { createOrtStage, type Device } from './runtime';

/** How a package's layers are laid out on devices; chosen at load time, never baked into the package. */
export interface DecoderPlan {
  /** One entry per pipeline stage ('cpu' | 'cuda:N' | 'webgpu'); default one 'cpu'. */
  devices?: Device[];
  /** Pipeline depth k for ppsd/spd/eesd (default: devices.length, at least 2). */
  stages?: number;
  /** Early-exit layer E (default: nLayers / k). */
  exitLayer?: number;
  /** ORT intra-op threads per stage (default 1: a CPU device is one core). */
  threadsPerStage?: number;
  maxSeqLen?: number;
  /** Fall back to CPU when a configured GPU provider is unavailable (logged). */
  allowCpuFallback?: boolean;
  log?: (message: string) => void;
}

/** Builds one decoder over a loaded package according to the plan. */
export async function openDecoder(
  name: DecoderName,
  pkg: LoadedPackage,
  plan: DecoderPlan,
): Promise<Decoder> {
  const devices = plan.devices?.length ? plan.devices : ['cpu' as Device];
  if (name === 'ar') {
    // AR runs the whole model as one stage on the first device; on CPU it gets every planned core.
    const threads = devices[0] === 'cpu' ? (plan.threadsPerStage ?? 1) * devices.length : 1;
    const stage = await createOrtStage(
      pkg.model,
      { firstLayer: 0, endLayer: pkg.model.config.nLayers },
      {
        device: devices[0],
        threads,
        maxSeqLen: plan.maxSeqLen,
        allowCpuFallback: plan.allowCpuFallback,
        log: plan.log,
      },
    );
    return new ArDecoder([stage]);
  }
  throw new Error(`decoder '${name}' is not available in this build`);
}
