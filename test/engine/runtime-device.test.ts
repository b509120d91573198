/** Execution-provider selection: clear errors for missing GPU libraries, or a logged CPU fallback. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import { createOrtStage, ortLibDir, parseDevice, sessionOptions } from '../../workers/engine/src/runtime';

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
});
