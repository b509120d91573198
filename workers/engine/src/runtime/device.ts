/**
 * Execution-provider selection for onnxruntime-node 1.30: session options, and clear errors (or a logged
 * CPU fallback) when the requested EP cannot be loaded.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { InferenceSession } from 'onnxruntime-node';
import type { ExternalModel } from '../graph/onnx';

export type Device = 'cpu' | `cuda:${number}` | 'webgpu';

export interface SessionConfig {
  device?: Device;
  /** intraOpNumThreads (ORT's default when absent: one per physical core). */
  threads?: number;
  /** Retry on CPU (and log it) when the requested EP is unavailable. */
  allowCpuFallback?: boolean;
  log?: (msg: string) => void;
  /** Outputs to leave on the device ('gpu-buffer'; WebGPU only, ignored on other devices). */
  preferredOutputLocation?: Record<string, 'cpu' | 'gpu-buffer'>;
  /** ORT profiling (writes a JSON trace; see InferenceSession.endProfiling). */
  enableProfiling?: boolean;
}

export function parseDevice(s: string): Device {
  if (s === 'cpu' || s === 'webgpu') return s;
  if (s === 'cuda') return 'cuda:0';
  if (/^cuda:\d+$/.test(s)) return s as Device;
  throw new Error(`unknown device '${s}' (expected cpu, cuda:<n> or webgpu)`);
}

export function executionProviders(device: Device): InferenceSession.ExecutionProviderConfig[] {
  if (device === 'cpu') return ['cpu'];
  if (device === 'webgpu') return ['webgpu'];
  const deviceId = Number(device.slice('cuda:'.length));
  return [{ name: 'cuda', deviceId }];
}

export function sessionOptions(
  device: Device,
  threads?: number,
  extra: Pick<SessionConfig, 'preferredOutputLocation' | 'enableProfiling'> = {},
): InferenceSession.SessionOptions {
  return {
    executionProviders: executionProviders(device),
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    interOpNumThreads: 1,
    logSeverityLevel: 3, // errors only (not ORT's notes about unused initializers)
    ...(threads ? { intraOpNumThreads: threads } : {}),
    ...(device === 'webgpu' && extra.preferredOutputLocation
      ? { preferredOutputLocation: extra.preferredOutputLocation }
      : {}),
    ...(extra.enableProfiling ? { enableProfiling: true, profileFilePrefix: 'ort-profile' } : {}),
  };
}

/** The folder holding libonnxruntime.so.1 (where ORT looks for provider libraries). */
export function ortLibDir(): string {
  const main = createRequire(import.meta.url).resolve('onnxruntime-node');
  return join(dirname(main), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

/** What is missing for `device`, and how to install it. */
export function explainEpFailure(device: Device, err: unknown): string {
  const cause = err instanceof Error ? err.message : String(err);
  if (device.startsWith('cuda')) {
    const dir = ortLibDir();
    const libs = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'];
    const missing = libs.filter((l) => !existsSync(join(dir, l)));
    return (
      `CUDA execution provider unavailable for ${device}: ${cause}\n` +
      (missing.length ? `  missing in ${dir}: ${missing.join(', ')}\n` : '') +
      '  onnxruntime-node 1.30 does not ship the CUDA provider. Copy libonnxruntime_providers_shared.so and ' +
      'libonnxruntime_providers_cuda.so, exactly version 1.30.0 (NuGet package Microsoft.ML.OnnxRuntime.Gpu.Linux), ' +
      `next to libonnxruntime.so.1 in ${dir} (or reinstall onnxruntime-node with network access so its postinstall ` +
      'downloads them), and install CUDA 12.x and cuDNN 9.x (libcudart.so.12, libcublas.so.12, libcudnn.so.9 on ' +
      'the loader path, e.g. LD_LIBRARY_PATH) with an NVIDIA driver that supports CUDA 12. Or use --device cpu.'
    );
  }
  if (device === 'webgpu') {
    return (
      `WebGPU execution provider unavailable: ${cause}\n` +
      '  onnxruntime-node runs WebGPU through Dawn over Vulkan: it needs libvulkan.so.1 and a Vulkan driver (ICD) ' +
      'for the GPU (e.g. apt install libvulkan1 mesa-vulkan-drivers, or the NVIDIA driver). Or use --device cpu.'
    );
  }
  return `could not create an ONNX Runtime session on ${device}: ${cause}`;
}

/**
 * Creates a session on `device`; when that EP is unavailable, fails with an explanation or falls back to CPU.
 * `model` is the ONNX bytes, or bytes plus in-memory external data (GraphBuilder.toExternal), which ORT
 * copies in once: no serialized copy of the weights is ever made.
 */
export async function createSession(
  model: Uint8Array | ExternalModel,
  cfg: SessionConfig,
): Promise<{ session: InferenceSession; device: Device }> {
  const device = cfg.device ?? 'cpu';
  const bytes = model instanceof Uint8Array ? model : model.bytes;
  const ext = model instanceof Uint8Array ? {} : { externalData: model.externalData };
  const create = (d: Device) =>
    InferenceSession.create(bytes, { ...sessionOptions(d, cfg.threads, cfg), ...ext });
  try {
    return { session: await create(device), device };
  } catch (err) {
    if (device === 'cpu') throw new Error(explainEpFailure(device, err));
    const why = explainEpFailure(device, err);
    if (!cfg.allowCpuFallback) throw new Error(why);
    cfg.log?.(`${why}\n  falling back to the CPU execution provider`);
    return { session: await create('cpu'), device: 'cpu' };
  }
}
