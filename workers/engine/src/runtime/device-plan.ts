/**
 * Device plans: which device each pipeline stage runs on, from configuration (`PPSD_DEVICES`,
 * `--devices`) or detected, plus a preflight that says what is missing before any session is created.
 *
 *   spec    'cpu,cpu' | 'cuda:0,cuda:1' | 'webgpu' | 'auto' (or empty)
 *   auto    one `cuda:i` per NVIDIA GPU when the driver shows GPUs AND the ORT CUDA provider libraries
 *           sit next to libonnxruntime.so.1; otherwise one `cpu` per core (os.availableParallelism()).
 *
 * Everything the plan looks at goes through `DeviceProbes`, so the logic is testable with fake /proc
 * trees and library lists; the defaults read the real host. Nothing here loads a GPU library.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { type Device, ortLibDir, parseDevice } from './device';

/** The ORT 1.30.0 CUDA provider libraries (NuGet Microsoft.ML.OnnxRuntime.Gpu.Linux), next to libonnxruntime.so.1. */
export const ORT_CUDA_PROVIDER_LIBS = [
  'libonnxruntime_providers_shared.so',
  'libonnxruntime_providers_cuda.so',
] as const;
/** What the CUDA provider of ORT 1.30 loads from CUDA 12.x and cuDNN 9.x. */
export const CUDA_RUNTIME_LIBS = [
  'libcudart.so.12',
  'libcublas.so.12',
  'libcublasLt.so.12',
  'libcurand.so.10',
  'libcufft.so.11',
] as const;
export const CUDNN_LIBS = ['libcudnn.so.9'] as const;
/** The NVIDIA driver's user-space library. */
export const DRIVER_LIBS = ['libcuda.so.1'] as const;
export const VULKAN_LIBS = ['libvulkan.so.1'] as const;

export interface DeviceProbes {
  /** Folder with one entry per NVIDIA GPU (default /proc/driver/nvidia/gpus). */
  procGpusDir?: string;
  /** Device folder holding nvidia0, nvidia1, ... (default /dev). */
  devDir?: string;
  /** Output of `nvidia-smi -L`, or undefined when it is not installed (default: runs it). */
  nvidiaSmi?: () => string | undefined;
  /** Where libonnxruntime.so.1 lives (default ortLibDir()). */
  ortLibDir?: string;
  /** Whether the dynamic loader would find a shared library by soname (default: ldconfig + LD_LIBRARY_PATH). */
  hasLibrary?: (soname: string) => boolean;
  /** Vulkan ICD manifests present (default: the standard icd.d folders and VK_ICD_FILENAMES/VK_DRIVER_FILES). */
  vulkanIcds?: () => string[];
  /** CPU cores for the 'auto' CPU plan (default os.availableParallelism()). */
  cpus?: number;
  env?: NodeJS.ProcessEnv;
}

export interface DevicePlanOptions {
  /** Number of stages: a one-entry list is repeated, 'auto' assigns GPUs round-robin / one cpu per stage. */
  stages?: number;
  /** An unavailable device becomes 'cpu' (logged) instead of an error. */
  allowCpuFallback?: boolean;
  log?: (msg: string) => void;
  probes?: DeviceProbes;
}

export interface DevicePlan {
  /** One device per stage. */
  devices: Device[];
  /** How the plan came about, for the start-up log. */
  reason: string;
}

// ---- probes ---------------------------------------------------------------------------------------

const lddCache = new Map<string, Set<string>>();
function ldconfigSonames(): Set<string> {
  const cached = lddCache.get('ldconfig');
  if (cached) return cached;
  const names = new Set<string>();
  for (const bin of ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig']) {
    const r = spawnSync(bin, ['-p'], { encoding: 'utf8', timeout: 5000 });
    if (r.status === 0 && r.stdout) {
      for (const line of r.stdout.split('\n')) {
        const m = /^\s*(\S+)\s+\(/.exec(line);
        if (m) names.add(m[1]);
      }
      break;
    }
  }
  lddCache.set('ldconfig', names);
  return names;
}

function defaultHasLibrary(env: NodeJS.ProcessEnv, ortDir: string): (soname: string) => boolean {
  const dirs = [
    ...(env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
    ortDir,
    '/usr/local/cuda/lib64',
    '/usr/local/cuda/targets/x86_64-linux/lib',
    '/usr/lib/x86_64-linux-gnu',
    '/usr/local/nvidia/lib64',
  ];
  return (soname) => ldconfigSonames().has(soname) || dirs.some((d) => existsSync(join(d, soname)));
}

function defaultVulkanIcds(env: NodeJS.ProcessEnv): string[] {
  const files = [env.VK_ICD_FILENAMES, env.VK_DRIVER_FILES]
    .filter((x): x is string => !!x)
    .flatMap((x) => x.split(':'))
    .filter((f) => existsSync(f));
  for (const d of ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d']) {
    try {
      for (const f of readdirSync(d)) if (f.endsWith('.json')) files.push(join(d, f));
    } catch {
      // folder absent
    }
  }
  return files;
}

function defaultNvidiaSmi(): string | undefined {
  const r = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 ? r.stdout : undefined;
}

function resolved(p: DeviceProbes = {}): Required<DeviceProbes> {
  const env = p.env ?? process.env;
  const dir = p.ortLibDir ?? ortLibDir();
  return {
    procGpusDir: p.procGpusDir ?? '/proc/driver/nvidia/gpus',
    devDir: p.devDir ?? '/dev',
    nvidiaSmi: p.nvidiaSmi ?? defaultNvidiaSmi,
    ortLibDir: dir,
    hasLibrary: p.hasLibrary ?? defaultHasLibrary(env, dir),
    vulkanIcds: p.vulkanIcds ?? (() => defaultVulkanIcds(env)),
    cpus: p.cpus ?? availableParallelism(),
    env,
  };
}

/**
 * Number of NVIDIA GPUs the driver shows: /proc/driver/nvidia/gpus/* (one folder per GPU), else
 * /dev/nvidia<N> device nodes, else the lines of `nvidia-smi -L`. 0 when there is no driver.
 */
export function detectNvidiaGpus(probes?: DeviceProbes): number {
  const p = resolved(probes);
  try {
    const n = readdirSync(p.procGpusDir).length;
    if (n > 0) return n;
  } catch {
    // no driver /proc entry (no driver, or a container without it)
  }
  try {
    const n = readdirSync(p.devDir).filter((f) => /^nvidia\d+$/.test(f)).length;
    if (n > 0) return n;
  } catch {
    // no /dev
  }
  const smi = p.nvidiaSmi();
  return smi ? smi.split('\n').filter((l) => /^GPU \d+:/.test(l.trim())).length : 0;
}

/** The ORT CUDA provider libraries missing next to libonnxruntime.so.1. */
export function missingCudaProviderLibs(probes?: DeviceProbes): string[] {
  const p = resolved(probes);
  return ORT_CUDA_PROVIDER_LIBS.filter((l) => !existsSync(join(p.ortLibDir, l)));
}

/**
 * What keeps `device` from running here, one line each (empty: nothing found missing). A preflight
 * only: an empty list does not prove the EP loads (e.g. a Vulkan ICD that Dawn rejects, such as
 * llvmpipe); session creation still reports such failures through explainEpFailure.
 */
export function deviceProblems(device: Device, probes?: DeviceProbes): string[] {
  const p = resolved(probes);
  const problems: string[] = [];
  if (device === 'cpu') return problems;
  if (device === 'webgpu') {
    const lib = VULKAN_LIBS.filter((l) => !p.hasLibrary(l));
    if (lib.length)
      problems.push(
        `Vulkan loader missing (${lib.join(', ')}): apt install libvulkan1 (Dawn runs WebGPU over Vulkan)`,
      );
    if (p.vulkanIcds().length === 0)
      problems.push(
        'no Vulkan driver (ICD manifest in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d): install the GPU ' +
          "vendor's Vulkan driver (the NVIDIA driver ships one; mesa-vulkan-drivers for others)",
      );
    return problems;
  }
  const id = Number(device.slice('cuda:'.length));
  const gpus = detectNvidiaGpus(p);
  const missingProviders = ORT_CUDA_PROVIDER_LIBS.filter((l) => !existsSync(join(p.ortLibDir, l)));
  if (missingProviders.length) {
    problems.push(
      `ORT CUDA provider libraries missing in ${p.ortLibDir}: ${missingProviders.join(', ')} (copy them, exactly ` +
        'version 1.30.0, from the NuGet package Microsoft.ML.OnnxRuntime.Gpu.Linux, runtimes/linux-x64/native/; ' +
        'infra/docker/worker.Dockerfile does this)',
    );
  }
  if (gpus === 0) {
    problems.push(
      'no NVIDIA GPU visible (no /proc/driver/nvidia/gpus, /dev/nvidia<N> or nvidia-smi): install the NVIDIA ' +
        'driver (>= 525 for CUDA 12) and, in a container, run it with the GPU passed through (--gpus all / ' +
        'the NVIDIA container toolkit)',
    );
  } else if (id >= gpus) {
    problems.push(`${device} does not exist: ${gpus} NVIDIA GPU(s) visible (cuda:0 .. cuda:${gpus - 1})`);
  }
  const driver = DRIVER_LIBS.filter((l) => !p.hasLibrary(l));
  if (driver.length)
    problems.push(`NVIDIA driver library missing (${driver.join(', ')}): install the NVIDIA driver`);
  const cuda = CUDA_RUNTIME_LIBS.filter((l) => !p.hasLibrary(l));
  if (cuda.length)
    problems.push(
      `CUDA 12.x runtime libraries missing (${cuda.join(', ')}): install CUDA 12.x (e.g. the cuda-libraries-12-x ` +
        'packages or an nvidia/cuda:12.x-runtime image) and put its lib64 on the loader path (LD_LIBRARY_PATH)',
    );
  const cudnn = CUDNN_LIBS.filter((l) => !p.hasLibrary(l));
  if (cudnn.length)
    problems.push(
      `cuDNN 9.x missing (${cudnn.join(', ')}): install cuDNN 9 for CUDA 12 (e.g. libcudnn9-cuda-12, or an ` +
        'nvidia/cuda:12.x-cudnn-runtime image)',
    );
  return problems;
}

/** Preflight for worker start: throws one message naming everything missing for `device`. */
export function checkDevice(device: Device, probes?: DeviceProbes): void {
  const problems = deviceProblems(device, probes);
  if (problems.length) {
    throw new Error(
      `device ${device} is unavailable:\n  - ${problems.join('\n  - ')}\n  (see docs/GPU.md; or use cpu, or allow the CPU fallback)`,
    );
  }
}

// ---- the plan ------------------------------------------------------------------------------------

/** Parses a device spec ('auto', empty, or a comma list) and checks every device; see the file comment. */
export function resolveDevicePlan(spec: string | undefined, opts: DevicePlanOptions = {}): DevicePlan {
  const p = resolved(opts.probes);
  const stages = opts.stages;
  if (stages !== undefined && (!Number.isInteger(stages) || stages < 1))
    throw new Error(`stages must be a positive integer, got ${stages}`);
  const s = (spec ?? '').trim();

  if (s === '' || s === 'auto') {
    const gpus = detectNvidiaGpus(p);
    if (gpus > 0) {
      const problems = deviceProblems('cuda:0', p);
      if (problems.length === 0) {
        const n = stages ?? gpus;
        return {
          devices: Array.from({ length: n }, (_, i) => `cuda:${i % gpus}` as Device),
          reason: `auto: ${gpus} NVIDIA GPU(s) with the CUDA provider installed`,
        };
      }
      opts.log?.(
        `auto device plan: ${gpus} NVIDIA GPU(s) found but CUDA cannot be used:\n  - ${problems.join('\n  - ')}\n  using the CPU`,
      );
    }
    const n = stages ?? Math.max(1, p.cpus);
    return {
      devices: Array.from({ length: n }, () => 'cpu' as Device),
      reason: gpus > 0 ? 'auto: CUDA unusable, one cpu stage each' : `auto: no NVIDIA GPU, ${n} cpu stage(s)`,
    };
  }

  let devices = s.split(',').map((d) => parseDevice(d.trim()));
  if (stages !== undefined && devices.length !== stages) {
    if (devices.length !== 1)
      throw new Error(`device list '${s}' has ${devices.length} entries for ${stages} stages`);
    devices = Array.from({ length: stages }, () => devices[0]);
  }
  const fallen: string[] = [];
  const checked = new Map<Device, Device>();
  devices = devices.map((d) => {
    const known = checked.get(d);
    if (known) return known;
    const problems = deviceProblems(d, p);
    let use = d;
    if (problems.length) {
      const why = `device ${d} is unavailable:\n  - ${problems.join('\n  - ')}`;
      if (!opts.allowCpuFallback)
        throw new Error(`${why}\n  (see docs/GPU.md; or use cpu, or allow the CPU fallback)`);
      opts.log?.(`${why}\n  falling back to the CPU for its stages`);
      fallen.push(d);
      use = 'cpu';
    }
    checked.set(d, use);
    return use;
  });
  return {
    devices,
    reason: fallen.length ? `configured '${s}', ${fallen.join(', ')} fell back to cpu` : `configured '${s}'`,
  };
}
