/**
 * GPU benchmark: AR and PPSD tokens/s on random-weight Llama shapes for each execution provider that
 * works on this host, with the per-token time of one full-model stage split into compute and
 * host<->device transfer, plus the per-token transfer byte accounting of each graph design.
 *
 *   npx tsx scripts/bench-gpu.ts [--providers auto|cpu,cuda:0,webgpu] [--shapes 110m,1b]
 *       [--ctx 64,512] [--steps 20] [--tokens 48] [--prompt 16] [--stages 2] [--alpha 0.8]
 *       [--threads N] [--no-decoders] [--write-docs]
 *
 * Transfer time is estimated from the bus bytes of the graph design (runtime/transfer.ts) and host->device
 * and device->host copy rates measured on the same provider with two tiny graphs (a big input reduced to
 * a scalar; a scalar expanded to a big output), so: transfer = toDevice/h2d + toHost/d2h, compute = run - transfer.
 * Random weights: PPSD acceptance is controlled (drafts replaced by the AR token with probability alpha),
 * so its tokens/s is a controlled-acceptance figure, not a real model's.
 * --write-docs replaces the section between <!-- gpu-bench:start --> and <!-- gpu-bench:end --> of
 * docs/BENCHMARKS.md (appending it if absent).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { timeGeneration } from '../workers/engine/src/bench/harness';
import { createDecoder } from '../workers/engine/src/decode';
import { GraphBuilder } from '../workers/engine/src/graph';
import type { LlamaConfig } from '../workers/engine/src/model/llama';
import { llamaConfig, randomLlama } from '../workers/engine/src/model/random';
import {
  busBytes,
  createOrtStage,
  type Device,
  deviceProblems,
  parseDevice,
  providerOf,
  resolveDevicePlan,
  sessionOptions,
  stageTransfers,
  transferTable,
} from '../workers/engine/src/runtime';

const START = '<!-- gpu-bench:start -->';
const END = '<!-- gpu-bench:end -->';

const SHAPES: Record<string, LlamaConfig> = {
  // llama2.c stories110M / Llama-2 110M shape
  '110m': llamaConfig({
    dim: 768,
    nLayers: 12,
    nHeads: 12,
    hiddenDim: 2048,
    vocabSize: 32000,
    maxSeqLen: 2048,
  }),
  // TinyLlama-1.1B-ish (Llama-2 architecture, grouped-query attention): fills a GPU better
  '1b': llamaConfig({
    dim: 2048,
    nLayers: 22,
    nHeads: 32,
    nKvHeads: 4,
    hiddenDim: 5632,
    vocabSize: 32000,
    maxSeqLen: 2048,
  }),
};

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] && !process.argv[i + 1].startsWith('--') ? process.argv[i + 1] : def;
}
const flag = (name: string) => process.argv.includes(`--${name}`);
const nums = (s: string) => s.split(',').map(Number);
const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];
const log = (m: string) => console.error(`[bench-gpu] ${m}`);

/** Runs a tiny session on `device`; returns why it cannot run there, or undefined. */
async function probe(device: Device): Promise<string | undefined> {
  if (device === 'cpu') return undefined;
  const problems = device === 'webgpu' ? [] : deviceProblems(device);
  // short reasons for the table (the full explanations: checkDevice / docs/GPU.md)
  if (problems.length) return problems.map((p) => p.split(/:| \(/)[0]).join('; ');
  try {
    const g = new GraphBuilder('probe');
    g.output('y', g.neg(g.input('x', 'float32', [4])), 'float32', [4]);
    const s = await InferenceSession.create(g.toBytes(), sessionOptions(device, 1));
    await s.run({ x: new Tensor('float32', new Float32Array(4), [4]) });
    await s.release();
    return undefined;
  } catch (e) {
    const m = (e as Error).message.split('\n')[0];
    return m.slice(m.lastIndexOf('was false. ') >= 0 ? m.lastIndexOf('was false. ') + 11 : 0);
  }
}

/** Host->device and device->host copy rates (bytes/ms) through ORT on `device`, from 64 MiB tensors. */
async function copyRates(device: Device): Promise<{ h2d: number; d2h: number }> {
  const n = 16 << 20; // floats = 64 MiB
  const up = new GraphBuilder('h2d');
  up.output('y', up.reduceMean(up.input('x', 'float32', ['N']), [0]), 'float32', [1]);
  const down = new GraphBuilder('d2h');
  down.output('y', down.expand(down.f32(1), down.input('shape', 'int64', [1])), 'float32', ['N']);
  const opts = sessionOptions(device, undefined);
  const su = await InferenceSession.create(up.toBytes(), opts);
  const sd = await InferenceSession.create(down.toBytes(), opts);
  const time = async (s: InferenceSession, feeds: Record<string, Tensor>) => {
    await s.run(feeds);
    const t: number[] = [];
    for (let i = 0; i < 7; i++) {
      const t0 = performance.now();
      await s.run(feeds);
      t.push(performance.now() - t0);
    }
    return med(t);
  };
  const x = (k: number) => ({ x: new Tensor('float32', new Float32Array(k), [k]) });
  const shape = (k: number) => ({ shape: new Tensor('int64', BigInt64Array.of(BigInt(k)), [1]) });
  const h2d = (4 * (n - 1024)) / Math.max(1e-3, (await time(su, x(n))) - (await time(su, x(1024))));
  const d2h = (4 * (n - 1024)) / Math.max(1e-3, (await time(sd, shape(n))) - (await time(sd, shape(1024))));
  await su.release();
  await sd.release();
  return { h2d, d2h };
}

interface Row {
  shape: string;
  device: Device;
  ctx: number;
  runMs: number;
  transferMs: number;
  busMiB: number;
}

async function perToken(
  shape: string,
  config: LlamaConfig,
  device: Device,
  ctxs: number[],
  steps: number,
  threads?: number,
) {
  const model = randomLlama(config, 1);
  const spec = { firstLayer: 0, endLayer: config.nLayers };
  const stage = await createOrtStage(model, spec, { device, threads, maxSeqLen: config.maxSeqLen });
  const rates = device === 'cpu' ? undefined : await copyRates(device);
  const design = stage.kvCache;
  const rows: Row[] = [];
  for (const ctx of ctxs) {
    stage.truncate(0);
    for (let p = 0; p < ctx; p += 128) {
      const n = Math.min(128, ctx - p);
      await stage.forward({ tokens: Int32Array.from({ length: n }, (_, j) => (p + j) % 1000), logitRows: 1 });
    }
    const t: number[] = [];
    for (let i = 0; i < steps + 2; i++) {
      const t0 = performance.now();
      await stage.forward({ tokens: Int32Array.of(5 + i) });
      if (i >= 2) t.push(performance.now() - t0);
      // host cache: O(1) truncate keeps the context fixed; the device cache re-slices on device
      stage.truncate(ctx);
    }
    const b = busBytes(stageTransfers(config, spec, design, providerOf(device), { T: 1, P: ctx }));
    const transferMs = rates ? b.toDevice / rates.h2d + b.toHost / rates.d2h : 0;
    rows.push({ shape, device, ctx, runMs: med(t), transferMs, busMiB: b.total / (1 << 20) });
    log(
      `${shape} ${device} ctx ${ctx}: ${med(t).toFixed(2)} ms/token, transfer ~${transferMs.toFixed(2)} ms`,
    );
  }
  await stage.release();
  return { rows, rates, model };
}

async function decoderRates(
  model: ReturnType<typeof randomLlama>,
  device: Device,
  o: { tokens: number; prompt: number; stages: number; alpha: number; threads?: number },
) {
  const prompt = Int32Array.from({ length: o.prompt }, (_, i) => (i * 37 + 11) % model.config.vocabSize);
  const ar = await createDecoder('ar', { model, devices: [device], threadsPerStage: o.threads, log });
  await timeGeneration(ar, prompt, 4); // warm-up
  const a = await timeGeneration(ar, prompt, o.tokens);
  await ar.close();
  const ppsd = await createDecoder('ppsd', {
    model,
    stages: o.stages,
    devices: Array.from({ length: o.stages }, () => device),
    threadsPerStage: o.threads,
    controlledAcceptance: { alpha: o.alpha, seed: 1, arTokens: a.tokens },
    log,
  });
  const ca = { alpha: o.alpha, seed: 1, arTokens: a.tokens };
  await timeGeneration(ppsd, prompt, 4, ca);
  const p = await timeGeneration(ppsd, prompt, o.tokens, ca);
  await ppsd.close();
  const rate = (r: { tokens: number[]; decodeMs: number }) => ((r.tokens.length - 1) * 1000) / r.decodeMs;
  return { ar: rate(a), ppsd: rate(p) };
}

function gpuName(): string {
  const r = spawnSync(
    'nvidia-smi',
    ['--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
    {
      encoding: 'utf8',
    },
  );
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim().split('\n').join('; ') : 'none';
}

async function main() {
  const shapes = arg('shapes', '110m,1b').split(',');
  for (const s of shapes) if (!SHAPES[s]) throw new Error(`unknown shape ${s} (${Object.keys(SHAPES)})`);
  const spec = arg('providers', 'auto');
  // auto: the CPU, every GPU the device plan finds (cuda:i), and WebGPU; each is probed before use
  const gpus = resolveDevicePlan('auto', { stages: 1 }).devices.filter((d) => d !== 'cpu');
  const candidates: Device[] =
    spec === 'auto'
      ? [...new Set<Device>(['cpu', 'cuda:0', ...gpus, 'webgpu'])]
      : spec.split(',').map((d) => parseDevice(d.trim()));
  const ctxs = nums(arg('ctx', '64,512'));
  const steps = Number(arg('steps', '20'));
  const threads = process.argv.includes('--threads') ? Number(arg('threads', '1')) : undefined;
  const dec = {
    tokens: Number(arg('tokens', '48')),
    prompt: Number(arg('prompt', '16')),
    stages: Number(arg('stages', '2')),
    alpha: Number(arg('alpha', '0.8')),
    threads,
  };

  const working: Device[] = [];
  const skipped: string[] = [];
  for (const d of candidates) {
    const why = await probe(d);
    if (why) {
      skipped.push(`\`${d}\`: ${why}`);
      log(`skipping ${d}: ${why}`);
    } else working.push(d);
  }
  const rows: Row[] = [];
  const rateLines: string[] = [];
  const decLines: string[] = [];
  for (const shape of shapes) {
    for (const device of working) {
      log(`${shape} on ${device}...`);
      const r = await perToken(shape, SHAPES[shape], device, ctxs, steps, threads);
      rows.push(...r.rows);
      if (r.rates)
        rateLines.push(
          `| ${device} | ${(r.rates.h2d / 1e6).toFixed(2)} GB/s | ${(r.rates.d2h / 1e6).toFixed(2)} GB/s |`,
        );
      if (!flag('no-decoders')) {
        const d = await decoderRates(r.model, device, dec);
        decLines.push(
          `| ${shape} | ${device} | ${d.ar.toFixed(1)} | ${d.ppsd.toFixed(1)} (k=${dec.stages}, alpha=${dec.alpha}) | ${(d.ppsd / d.ar).toFixed(2)}x |`,
        );
        log(`${shape} ${device}: AR ${d.ar.toFixed(1)} tok/s, PPSD ${d.ppsd.toFixed(1)} tok/s`);
      }
    }
  }

  // ---- the byte accounting (no GPU needed), for every shape whether measured or not
  const acct: { label: string; items: ReturnType<typeof stageTransfers> }[] = [];
  for (const shape of Object.keys(SHAPES)) {
    const c = SHAPES[shape];
    const whole = { firstLayer: 0, endLayer: c.nLayers };
    const half = Math.floor(c.nLayers / 2);
    for (const [provider, design] of [
      ['cuda', 'host'],
      ['cuda', 'device'],
      ['webgpu', 'device'],
    ] as const) {
      acct.push({
        label: `${shape}, ${provider}, ${design} cache, AR token at P=1024`,
        items: stageTransfers(c, whole, design, provider, { T: 1, P: 1024 }),
      });
    }
    acct.push({
      label: `${shape}, cuda, host cache, PPSD stage 1 of 2 ([0, ${half})), T=4 at P=1024`,
      items: stageTransfers(
        c,
        { firstLayer: 0, endLayer: half, exit: { afterLayer: half } },
        'host',
        'cuda',
        { T: 4, P: 1024, R: 4 },
      ),
    });
  }

  const cmd = `npx tsx scripts/bench-gpu.ts ${process.argv.slice(2).join(' ')}`.trim();
  const gpu = gpuName();
  const lines = [
    START,
    '## GPU execution providers',
    '',
    `Generated by \`${cmd}\` on ${new Date().toISOString().slice(0, 10)}. GPU: ${gpu}. CPU: ${cpus()[0]?.model ?? '?'} (${cpus().length} cores).`,
    `Providers measured: ${working.map((d) => `\`${d}\``).join(', ') || 'none'}.` +
      (skipped.length ? ` Not available here: ${skipped.join('; ')}.` : ''),
    '',
    gpu === 'none'
      ? '**No GPU was available in this session**: the numbers below are the CPU provider only (proving the script runs); ' +
        'the GPU rows will appear when the script runs on a GPU host (see docs/GPU.md).'
      : "Random-weight models (the shapes below); PPSD acceptance is controlled (alpha), not a real model's.",
    '',
    '### Per-token time of one full-model stage (AR step, T=1), median',
    '',
    '| shape | device | context | ms/token | transfer (est.) | compute (est.) | bus bytes/token |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.shape} | ${r.device} | ${r.ctx} | ${r.runMs.toFixed(2)} | ${r.transferMs.toFixed(2)} | ${(r.runMs - r.transferMs).toFixed(2)} | ${r.busMiB.toFixed(2)} MiB |`,
    ),
    '',
    ...(rateLines.length
      ? [
          'Measured copy rates through ORT (64 MiB tensors):',
          '',
          '| device | host->device | device->host |',
          '| --- | ---: | ---: |',
          ...rateLines,
          '',
        ]
      : []),
    ...(decLines.length
      ? [
          `### Decoders (${dec.tokens} tokens after a ${dec.prompt}-token prompt, greedy)`,
          '',
          '| shape | device | AR tok/s | PPSD tok/s | PPSD / AR |',
          '| --- | --- | ---: | ---: | ---: |',
          ...decLines,
          '',
        ]
      : []),
    '### Host<->device bytes per run, by tensor (from the shapes; `runtime/transfer.ts`)',
    '',
    'CUDA has no device-resident outputs in onnxruntime-node, so the host-cache design (past in, new rows out) is the',
    'minimum there; WebGPU keeps the present K/V on the GPU and moves only tokens in and logits out.',
    '',
    transferTable(acct),
    END,
  ];
  const section = lines.join('\n');
  console.log(section);
  if (flag('write-docs')) {
    const file = join(process.cwd(), 'docs', 'BENCHMARKS.md');
    const doc = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n';
    const a = doc.indexOf(START);
    const b = doc.indexOf(END);
    const next =
      a >= 0 && b > a
        ? doc.slice(0, a) + section + doc.slice(b + END.length)
        : `${doc.trimEnd()}\n\n${section}\n`;
    writeFileSync(file, next);
    log(`wrote ${file}`);
  }
}

await main();
