/**
 * What one batched decode step costs, by batch size and past length, without the profiler: a model's
 * batched graph (BatchedOrtStage, as the scheduler runs it) for N sequences, each with a P-token past,
 * then the median of `--steps` one-row-per-sequence decode steps. The ratio t(N) / t(1) bounds what
 * batching can give: tokens/s at N are at most N x t(1) / t(N) of one sequence's, and every sequence's
 * inter-token latency is at least t(N).
 *
 *   node --import tsx scripts/time-batched-step.ts --package .data/bench-batching/llama2-110m-q4_0 \
 *     [--batch 1,16] [--past 1,64,200,1000] [--threads 2] [--steps 48]
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { readLlama2c } from '../workers/engine/src/formats/llama2c';
import { loadPackage } from '../workers/engine/src/package';
import { BatchedOrtStage } from '../workers/engine/src/runtime/batched-stage';
import { KvCache } from '../workers/engine/src/runtime/kv-cache';

const root = path.resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    package: { type: 'string' },
    batch: { type: 'string', default: '1,16' },
    past: { type: 'string', default: '1,64,200,1000' },
    threads: { type: 'string', default: '2' },
    steps: { type: 'string', default: '48' },
  },
});
const list = (s: string) => s.split(',').map(Number);
const model = values.package
  ? (await loadPackage(path.resolve(values.package))).model
  : await readLlama2c(path.join(root, '../shared/models/stories260K/stories260K.bin'));
const c = model.config;
const steps = Number(values.steps);
const decodeRow = () => ({ tokens: Int32Array.of(5) });

/** Median ms of `steps` decode steps of N sequences that each hold a P-token past. */
async function timeStep(stage: BatchedOrtStage, N: number, P: number): Promise<number> {
  const caches = Array.from(
    { length: N },
    () => new KvCache(P + steps + 16, c.nLayers, c.nKvHeads, c.dim / c.nHeads),
  );
  await stage.run(
    caches.map((cache) => ({ cache, input: { tokens: new Int32Array(P).fill(5), logitRows: 1 } })),
  );
  for (let s = 0; s < 4; s++) await stage.run(caches.map((cache) => ({ cache, input: decodeRow() })));
  const ms: number[] = [];
  for (let s = 0; s < steps; s++) {
    const t0 = performance.now();
    await stage.run(caches.map((cache) => ({ cache, input: decodeRow() })));
    ms.push(performance.now() - t0);
  }
  return ms.sort((a, b) => a - b)[Math.floor(ms.length / 2)];
}

const pasts = list(values.past);
const batches = list(values.batch);
const times = new Map<number, number[]>();
for (const N of batches) {
  const stage = new BatchedOrtStage(model, { firstLayer: 0, endLayer: c.nLayers }, N, {
    threads: Number(values.threads),
  });
  const row: number[] = [];
  for (const P of pasts) {
    row.push(await timeStep(stage, N, P));
    process.stderr.write(`[time-batched-step] N=${N} P=${P}: ${row.at(-1)!.toFixed(2)} ms\n`);
  }
  times.set(N, row);
  await stage.release();
}
const one = times.get(1);
const ms = (t: number) => `${t.toFixed(t < 10 ? 2 : 1)} ms`;
console.log(`| N | ${pasts.map((P) => `P = ${P}`).join(' | ')} |`);
console.log(`|---|${pasts.map(() => '---').join('|')}|`);
for (const [N, row] of times) {
  const cells = row.map((t, i) => (one && N > 1 ? `${ms(t)} (${((N * one[i]) / t).toFixed(2)}x)` : ms(t)));
  console.log(`| ${N} | ${cells.join(' | ')} |`);
}
if (one) console.log('\n(x: the most tokens/s N sequences can make over one, N x t(1) / t(N))');
