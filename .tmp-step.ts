import { loadPackage } from './workers/engine/src/package';
import { BatchedOrtStage } from './workers/engine/src/runtime/batched-stage';
import { KvCache } from './workers/engine/src/runtime/kv-cache';
const model = (await loadPackage('.data/bench-batching/llama2-110m-q4_0')).model;
const c = model.config;
for (const N of [1, 16]) {
  const stage = new BatchedOrtStage(model, { firstLayer: 0, endLayer: c.nLayers }, N, { threads: 2, accuracyLevel: 4 });
  for (const P of [1, 64, 200, 1000]) {
    const caches = Array.from({ length: N }, () => new KvCache(P + 80, c.nLayers, c.nKvHeads, c.dim / c.nHeads));
    await stage.run(caches.map((cache) => ({ cache, input: { tokens: new Int32Array(P).fill(5), logitRows: 1 } })));
    for (let s = 0; s < 8; s++) await stage.run(caches.map((cache) => ({ cache, input: { tokens: Int32Array.of(5) } })));
    const t0 = performance.now();
    for (let s = 0; s < 48; s++) await stage.run(caches.map((cache) => ({ cache, input: { tokens: Int32Array.of(5) } })));
    console.log(`N=${N} P=${P}: ${((performance.now() - t0) / 48).toFixed(2)} ms/step`);
  }
  await stage.release();
}
