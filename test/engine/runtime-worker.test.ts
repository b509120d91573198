/** The ORT stage works inside a worker_threads Worker, from graph bytes built on the main thread. */
import { Worker } from 'node:worker_threads';
import { expect, it } from 'vitest';
import { buildStageGraph } from '../../workers/engine/src/graph';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import { referenceForward } from '../../workers/engine/src/model/reference';
import { relErr } from './runtime-helpers';

it('a stage created from graph bytes inside a Worker matches the reference', async () => {
  const config = llamaConfig({
    dim: 24,
    nLayers: 2,
    nHeads: 4,
    nKvHeads: 2,
    hiddenDim: 40,
    vocabSize: 37,
    maxSeqLen: 16,
  });
  const model = randomLlama(config, 9, { std: 0.2 });
  const spec = { firstLayer: 0, endLayer: 2 };
  const graph = buildStageGraph(model, spec);
  const tokens = [1, 4, 9, 16, 25, 36];
  // Workers do not inherit vitest's TypeScript transform: load the fixture through tsx's API.
  const fixture = new URL('./runtime-worker-fixture.ts', import.meta.url).href;
  const worker = new Worker(
    `import('tsx/esm/api').then(({ tsImport }) => tsImport(${JSON.stringify(fixture)}, ${JSON.stringify(fixture)}))`,
    { eval: true },
  );
  try {
    const reply = new Promise<{ logits?: Float32Array[]; error?: string }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    worker.postMessage({ graph, info: { config, spec }, tokens }, [graph.buffer as ArrayBuffer]);
    const { logits, error } = await reply;
    expect(error).toBeUndefined();
    const ref = referenceForward(model, tokens);
    expect(logits!.length).toBe(4);
    for (const [i, l] of logits!.entries()) expect(relErr(l, ref.logits[2 + i])).toBeLessThan(1e-4);
  } finally {
    await worker.terminate();
  }
});
