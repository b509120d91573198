/** Execution-provider selection: clear errors for missing GPU libraries, or a logged CPU fallback. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import {
  createOrtStage,
  defaultGraphOptions,
  ortLibDir,
  parseDevice,
  presentOutputNames,
  sessionOptions,
} from '../../workers/engine/src/runtime';

const model = randomLlama(llamaConfig({ dim: 16, nLayers: 1, nHeads: 2, vocabSize: 20, maxSeqLen: 8 }), 1);
const spec = { firstLayer: 0, endLayer: 1 };
const cudaInstalled = existsSync(join(ortLibDir(), 'libonnxruntime_providers_cuda.so'));

describe('devices', () => {
  it('parses device names and sets the session options', () => {
    expect(parseDevice('cpu')).toBe('cpu');
    expect(parseDevice('cuda')).toBe('cuda:0');
    expect(parseDevice('cuda:3')).toBe('cuda:3');
    expect(parseDevice('webgpu')).toBe('webgpu');
    expect(() => parseDevice('tpu')).toThrow(/unknown device/);
    expect(sessionOptions('cuda:1', 3)).toMatchObject({
      executionProviders: [{ name: 'cuda', deviceId: 1 }],
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      intraOpNumThreads: 3,
      interOpNumThreads: 1,
    });
  });

  it.skipIf(cudaInstalled)(
    'a missing CUDA provider names the libraries and how to install them',
    async () => {
      const err = await createOrtStage(model, spec, { device: 'cuda:0' }).catch((e: Error) => e);
      expect(err).toBeInstanceOf(Error);
      const msg = (err as Error).message;
      expect(msg).toMatch(/libonnxruntime_providers_cuda\.so/);
      expect(msg).toMatch(/1\.30\.0/);
      expect(msg).toMatch(/CUDA 12\.x and cuDNN 9\.x/);
    },
  );

  it.skipIf(cudaInstalled)('falls back to CPU when allowed, and logs it', async () => {
    const logs: string[] = [];
    const s = await createOrtStage(model, spec, {
      device: 'cuda:0',
      allowCpuFallback: true,
      log: (m) => logs.push(m),
    });
    expect(s.device).toBe('cpu');
    expect(logs.join('\n')).toMatch(/falling back to the CPU/);
    expect((await s.forward({ tokens: Int32Array.of(1, 2) })).logits!.length).toBe(2 * 20);
    await s.release();
  });

  it('webgpu: a device-resident cache graph, its outputs kept on the GPU (options only; no adapter here)', () => {
    expect(defaultGraphOptions('webgpu')).toEqual({ attention: 'standard', kvCache: 'device' });
    expect(defaultGraphOptions('cuda:0')).toEqual({ attention: 'fused', kvCache: 'host' });
    const names = presentOutputNames({ firstLayer: 2, endLayer: 4 });
    expect(names).toEqual(['present_k.0', 'present_v.0', 'present_k.1', 'present_v.1']);
    const loc = Object.fromEntries(names.map((n) => [n, 'gpu-buffer' as const]));
    expect(sessionOptions('webgpu', 1, { preferredOutputLocation: loc })).toMatchObject({
      executionProviders: ['webgpu'],
      preferredOutputLocation: loc,
    });
    // never on the CPU session a fallback creates
    expect(sessionOptions('cpu', 1, { preferredOutputLocation: loc })).not.toHaveProperty(
      'preferredOutputLocation',
    );
  });

  it('webgpu with fallback allowed: runs the device-cache graph on CPU when no adapter is usable', async () => {
    const logs: string[] = [];
    const s = await createOrtStage(model, spec, {
      device: 'webgpu',
      allowCpuFallback: true,
      log: (m) => logs.push(m),
    });
    expect(s.kvCache).toBe('device');
    if (s.device === 'cpu')
      expect(logs.join('\n')).toMatch(/WebGPU execution provider unavailable[\s\S]*falling back/);
    const a = await s.forward({ tokens: Int32Array.of(1, 2, 3) });
    s.truncate(1);
    const b = await s.forward({ tokens: Int32Array.of(2, 3) });
    for (let i = 0; i < 40; i++) expect(b.logits![i]).toBeCloseTo(a.logits![20 + i], 4);
    await s.release();
  });
});
