/**
 * Where a batched step's time goes, by ONNX op: runs a model's batched graph for N sequences (a
 * `--prefill`-token prompt each, default 200, then 64 decode steps) with onnxruntime's profiler on, and prints per-run kernel time
 * and node count by op type, over the decode steps only (the prefill run is left out). Default model: stories260K; `--package <dir>` takes a ppsd package (e.g.
 * the Q4_0 110M shape bench-batching.ts builds under .data/bench-batching/llama2-110m-q4_0).
 *
 *   node --import tsx scripts/profile-batched-step.ts [N=16] [--package <dir>] [--threads 1] [--prefill 200]
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { readLlama2c } from '../workers/engine/src/formats/llama2c';
import { loadPackage } from '../workers/engine/src/package';
import { BatchedOrtStage } from '../workers/engine/src/runtime/batched-stage';
import { KvCache } from '../workers/engine/src/runtime/kv-cache';

const root = path.resolve(import.meta.dirname, '..');
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    package: { type: 'string' },
    threads: { type: 'string', default: '1' },
    prefill: { type: 'string', default: '200' },
  },
});
const N = Number(positionals[0] ?? 16);
const model = values.package
  ? (await loadPackage(path.resolve(values.package))).model
  : await readLlama2c(path.join(root, '../shared/models/stories260K/stories260K.bin'));
const c = model.config;
const before = new Set(await readdir(process.cwd()));
const stage = new BatchedOrtStage(model, { firstLayer: 0, endLayer: c.nLayers }, N, {
  threads: Number(values.threads),
  enableProfiling: true,
});
const caches = Array.from(
  { length: N },
  () => new KvCache(Number(values.prefill) + 64, c.nLayers, c.nKvHeads, c.dim / c.nHeads),
);
await stage.run(
  caches.map((cache) => ({
    cache,
    input: { tokens: new Int32Array(Number(values.prefill)).fill(5), logitRows: 1 },
  })),
);
for (let s = 0; s < 64; s++)
  await stage.run(caches.map((cache) => ({ cache, input: { tokens: Int32Array.of(5) } })));
await stage.release(); // writes the profile
const file = (await readdir(process.cwd())).find((f) => f.startsWith('ort-profile') && !before.has(f));
if (!file) throw new Error('no ORT profile written');
type Event = { cat?: string; name: string; ts: number; dur: number; args?: { op_name?: string } };
const events = JSON.parse(await readFile(file, 'utf8')) as Event[];
await rm(file);
// the first run is the prefill: only what starts after it counts
const [prefill, ...runs] = events.filter((e) => e.cat === 'Session' && e.name === 'model_run');
const decodeStart = prefill.ts + prefill.dur;
const byOp = new Map<string, { us: number; nodes: number }>();
for (const e of events) {
  if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || e.ts < decodeStart) continue;
  const op = e.args?.op_name ?? '?';
  const v = byOp.get(op) ?? { us: 0, nodes: 0 };
  v.us += e.dur;
  v.nodes += 1;
  byOp.set(op, v);
}
const per = (x: number) => (x / runs.length).toFixed(1);
const kernels = [...byOp.values()].reduce((s, v) => s + v.us, 0);
console.log(
  `${N} sequences, ${runs.length} decode runs after a ${values.prefill}-token prefill: ${per(runs.reduce((s, r) => s + r.dur, 0))} us per run, ${per(kernels)} us of it in kernels (profiling adds its own cost per node)`,
);
console.log('| op | us / run | nodes / run |\n|---|---|---|');
for (const [op, v] of [...byOp.entries()].sort((a, b) => b[1].us - a[1].us).slice(0, 12))
  console.log(`| ${op} | ${per(v.us)} | ${per(v.nodes)} |`);
