/**
 * Device plans and the GPU preflight: pure logic over injected probes (fake /proc and /dev trees,
 * library lists), plus the real host, which has no GPU and no CUDA provider libraries.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import {
  busBytes,
  CUDA_RUNTIME_LIBS,
  CUDNN_LIBS,
  checkDevice,
  createOrtStage,
  type DeviceProbes,
  detectNvidiaGpus,
  deviceProblems,
  ORT_CUDA_PROVIDER_LIBS,
  ortLibDir,
  resolveDevicePlan,
  stageTransfers,
} from '../../workers/engine/src/runtime';

const root = mkdtempSync(join(tmpdir(), 'ppsd-devplan-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A fake host: `gpus` GPUs under /proc (or /dev), provider libs present or not, loader libraries. */
function host(o: {
  gpus?: number;
  via?: 'proc' | 'dev' | 'smi';
  providers?: boolean;
  libs?: string[];
  icds?: string[];
  cpus?: number;
}): DeviceProbes {
  const dir = mkdtempSync(join(root, 'h-'));
  const proc = join(dir, 'proc');
  const dev = join(dir, 'dev');
  const ort = join(dir, 'ort');
  for (const d of [proc, dev, ort]) mkdirSync(d);
  const n = o.gpus ?? 0;
  for (let i = 0; i < n; i++) {
    if ((o.via ?? 'proc') === 'proc') mkdirSync(join(proc, `0000:0${i}:00.0`));
    if (o.via === 'dev') writeFileSync(join(dev, `nvidia${i}`), '');
  }
  writeFileSync(join(dev, 'nvidiactl'), ''); // not a GPU
  writeFileSync(join(ort, 'libonnxruntime.so.1'), '');
  if (o.providers) for (const l of ORT_CUDA_PROVIDER_LIBS) writeFileSync(join(ort, l), '');
  const libs = new Set(o.libs ?? []);
  return {
    procGpusDir: proc,
    devDir: dev,
    nvidiaSmi: () =>
      o.via === 'smi'
        ? Array.from({ length: n }, (_, i) => `GPU ${i}: NVIDIA H100 (UUID: GPU-${i})`).join('\n')
        : undefined,
    ortLibDir: ort,
    hasLibrary: (s) => libs.has(s),
    vulkanIcds: () => o.icds ?? [],
    cpus: o.cpus ?? 4,
  };
}
const CUDA_OK = ['libcuda.so.1', ...CUDA_RUNTIME_LIBS, ...CUDNN_LIBS];

describe('GPU detection', () => {
  it('counts GPUs from /proc, /dev/nvidia<N> or nvidia-smi -L', () => {
    expect(detectNvidiaGpus(host({ gpus: 2, via: 'proc' }))).toBe(2);
    expect(detectNvidiaGpus(host({ gpus: 3, via: 'dev' }))).toBe(3);
    expect(detectNvidiaGpus(host({ gpus: 1, via: 'smi' }))).toBe(1);
    expect(detectNvidiaGpus(host({ gpus: 0 }))).toBe(0);
  });

  it('names every missing piece for cuda: provider libs, driver, CUDA, cuDNN', () => {
    const none = deviceProblems('cuda:0', host({ gpus: 0 })).join('\n');
    expect(none).toMatch(/libonnxruntime_providers_cuda\.so/);
    expect(none).toMatch(/1\.30\.0/);
    expect(none).toMatch(/no NVIDIA GPU visible/);
    expect(none).toMatch(/libcuda\.so\.1/);
    expect(none).toMatch(/CUDA 12\.x runtime libraries missing \(libcudart\.so\.12/);
    expect(none).toMatch(/cuDNN 9\.x missing \(libcudnn\.so\.9\)/);
    const noCudnn = deviceProblems(
      'cuda:0',
      host({ gpus: 1, providers: true, libs: CUDA_OK.filter((l) => !l.startsWith('libcudnn')) }),
    );
    expect(noCudnn).toEqual([expect.stringMatching(/cuDNN 9\.x missing/)]);
    expect(deviceProblems('cuda:0', host({ gpus: 1, providers: true, libs: CUDA_OK }))).toEqual([]);
    expect(deviceProblems('cuda:2', host({ gpus: 2, providers: true, libs: CUDA_OK })).join()).toMatch(
      /cuda:2 does not exist: 2 NVIDIA GPU/,
    );
    expect(() => checkDevice('cuda:0', host({ gpus: 1, libs: CUDA_OK }))).toThrow(
      /device cuda:0 is unavailable:\n {2}- ORT CUDA provider libraries missing/,
    );
    expect(() => checkDevice('cpu', host({}))).not.toThrow();
  });

  it('webgpu needs the Vulkan loader and a driver', () => {
    expect(deviceProblems('webgpu', host({})).join('\n')).toMatch(/libvulkan\.so\.1[\s\S]*no Vulkan driver/);
    expect(
      deviceProblems('webgpu', host({ libs: ['libvulkan.so.1'], icds: ['/x/nvidia_icd.json'] })),
    ).toEqual([]);
  });
});

describe('resolveDevicePlan', () => {
  it('auto: one cuda stage per GPU when CUDA is usable, else one cpu per core', () => {
    const gpu = host({ gpus: 2, providers: true, libs: CUDA_OK });
    expect(resolveDevicePlan('auto', { probes: gpu }).devices).toEqual(['cuda:0', 'cuda:1']);
    expect(resolveDevicePlan(undefined, { probes: gpu, stages: 3 }).devices).toEqual([
      'cuda:0',
      'cuda:1',
      'cuda:0',
    ]);
    expect(resolveDevicePlan('auto', { probes: host({ cpus: 3 }) }).devices).toEqual(['cpu', 'cpu', 'cpu']);
    expect(resolveDevicePlan('', { probes: host({ cpus: 3 }), stages: 2 }).devices).toEqual(['cpu', 'cpu']);
    // GPUs but no provider libraries: CPU, and the log says why
    const logs: string[] = [];
    const plan = resolveDevicePlan('auto', {
      probes: host({ gpus: 2, libs: CUDA_OK, cpus: 2 }),
      log: (m) => logs.push(m),
    });
    expect(plan.devices).toEqual(['cpu', 'cpu']);
    expect(logs.join('\n')).toMatch(/2 NVIDIA GPU\(s\) found but CUDA cannot be used[\s\S]*providers_cuda/);
  });

  it('explicit lists: parsed, repeated for stages, checked, with an optional logged fallback', () => {
    const gpu = host({ gpus: 2, providers: true, libs: CUDA_OK });
    expect(resolveDevicePlan('cuda:0,cuda:1', { probes: gpu }).devices).toEqual(['cuda:0', 'cuda:1']);
    expect(resolveDevicePlan('cpu', { probes: gpu, stages: 3 }).devices).toEqual(['cpu', 'cpu', 'cpu']);
    expect(() => resolveDevicePlan('cpu,cpu', { probes: gpu, stages: 3 })).toThrow(/2 entries for 3 stages/);
    expect(() => resolveDevicePlan('tpu', { probes: gpu })).toThrow(/unknown device/);
    const bare = host({ gpus: 0 });
    expect(() => resolveDevicePlan('cuda:0,cuda:1', { probes: bare })).toThrow(
      /device cuda:0 is unavailable/,
    );
    const logs: string[] = [];
    const plan = resolveDevicePlan('cuda:0,cpu', {
      probes: bare,
      allowCpuFallback: true,
      log: (m) => logs.push(m),
    });
    expect(plan.devices).toEqual(['cpu', 'cpu']);
    expect(plan.reason).toMatch(/cuda:0 fell back to cpu/);
    expect(logs.join('\n')).toMatch(/falling back to the CPU/);
  });
});

describe('on this host (no GPU, no CUDA provider)', () => {
  const installed = ORT_CUDA_PROVIDER_LIBS.every((l) => existsSync(join(ortLibDir(), l)));
  it.skipIf(installed)(
    'cuda:0 fails naming the missing libraries; with fallback the plan and the stage run on CPU',
    async () => {
      expect(() => resolveDevicePlan('cuda:0')).toThrow(
        /libonnxruntime_providers_shared\.so, libonnxruntime_providers_cuda\.so/,
      );
      const logs: string[] = [];
      const plan = resolveDevicePlan('cuda:0', { allowCpuFallback: true, log: (m) => logs.push(m) });
      expect(plan.devices).toEqual(['cpu']);
      expect(logs.join('\n')).toMatch(/falling back to the CPU/);
      const model = randomLlama(
        llamaConfig({ dim: 16, nLayers: 1, nHeads: 2, vocabSize: 20, maxSeqLen: 8 }),
        1,
      );
      const s = await createOrtStage(model, { firstLayer: 0, endLayer: 1 }, { device: plan.devices[0] });
      expect((await s.forward({ tokens: Int32Array.of(1, 2) })).logits!.length).toBe(40);
      await s.release();
    },
  );
});

describe('transfer accounting', () => {
  const c = llamaConfig({ dim: 768, nLayers: 12, nHeads: 12, hiddenDim: 2048, vocabSize: 32000 });
  const whole = { firstLayer: 0, endLayer: 12 };
  const kvRow = 12 * 768 * 4; // K or V bytes per position over 12 layers

  it('host cache: the past goes in, only the new rows come out; nothing crosses on CPU', () => {
    const items = stageTransfers(c, whole, 'host', 'cuda', { T: 1, P: 1024 });
    const b = busBytes(items);
    expect(b.toDevice).toBe(8 + 8 + 8 + 2 * 1025 * kvRow);
    expect(b.toHost).toBe(32000 * 4 + 2 * kvRow);
    expect(busBytes(stageTransfers(c, whole, 'host', 'cpu', { T: 1, P: 1024 })).total).toBe(0);
  });

  it('device cache: resident on WebGPU (only tokens in, logits out), a double round trip on CUDA', () => {
    const gpu = busBytes(stageTransfers(c, whole, 'device', 'webgpu', { T: 1, P: 1024 }));
    expect(gpu).toEqual({ toDevice: 8 + 8 + 8 + 8, toHost: 32000 * 4, total: 32 + 128000 });
    const cuda = busBytes(stageTransfers(c, whole, 'device', 'cuda', { T: 1, P: 1024 }));
    expect(cuda.toHost).toBe(32000 * 4 + 2 * 1025 * kvRow);
    // a middle stage of a pipeline sends hidden states, not logits
    const mid = busBytes(stageTransfers(c, { firstLayer: 4, endLayer: 8 }, 'host', 'cuda', { T: 4, P: 0 }));
    expect(mid.toHost).toBe(4 * 768 * 4 + 2 * 4 * 4 * 768 * 4);
  });
});
