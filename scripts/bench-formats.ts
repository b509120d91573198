/**
 * ppsd's plain AR next to llama.cpp on the very same GGUF files, per weight format and thread count.
 *
 *   node --import tsx scripts/bench-formats.ts [--formats f32,f16,q8_0,q4_0] [--threads 1,2]
 *     [--contexts 64,512] [--gen 128] [--prompt 512] [--rounds 3] [--write]
 *
 * 1. A random-weight model of the Llama-2 110M shape (`ppsd synth`, seed 0) is written as one GGUF per
 *    format by `ppsd export-gguf`, and each GGUF is imported by `ppsd import --from X.gguf` (its tensors
 *    kept as they are: Q8_0/Q4_0 blocks map 1:1 onto q8/q4). All cached under .data/bench-formats/.
 * 2. The anchors: llama-bench built once from the llama.cpp source node-llama-cpp bundles, and
 *    node-llama-cpp's CPU prebuilt, both installed into .tmp/llamacpp by bench/llamacpp.ts.
 * 3. Interleaved rounds: in every round each (format, threads) runs ppsd, llama-bench and node-llama-cpp
 *    one after another (the format order rotates per round), each engine in its own process so its peak
 *    RSS (VmHWM) is its own. Measured: prefill of a `prompt`-token prompt from an empty context; greedy
 *    decode of `gen` tokens after a context of C tokens for each C in `contexts`.
 * Reported: medians over rounds with the min-max spread, and ppsd / llama.cpp ratios taken round by round.
 * --write puts the JSON in docs/bench/formats-llama2-110m.json, the section in docs/BENCHMARKS.md and the
 * chart in docs/img/formats-vs-llamacpp.svg.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import {
  type FormatRun,
  type FormatsJson,
  formatsChartSvg,
  formatsMarkdown,
} from '../workers/engine/src/bench/formats-report';
import {
  ensureLlamaBench,
  ensureNodeLlamaCpp,
  runLlamaBench,
  runNodeLlamaCpp,
} from '../workers/engine/src/bench/llamacpp';

const root = path.resolve(import.meta.dirname, '..');
const ppsd = path.join(root, 'workers/engine/src/cli/main.ts');
const work = path.join(root, '.data/bench-formats');
const exec = promisify(execFile);

const { values } = parseArgs({
  options: {
    child: { type: 'string' },
    threads: { type: 'string', default: '1,2' },
    formats: { type: 'string', default: 'f32,f16,q8_0,q4_0' },
    contexts: { type: 'string', default: '64,512' },
    gen: { type: 'string', default: '128' },
    prompt: { type: 'string', default: '512' },
    rounds: { type: 'string', default: '3' },
    write: { type: 'boolean', default: false },
  },
});
const threadList = values.threads.split(',').map(Number);
const formats = values.formats.split(',');
const contexts = values.contexts.split(',').map(Number);
const gen = Number(values.gen);
const promptLen = Number(values.prompt);
const rounds = Number(values.rounds);
const log = (msg: string) => console.error(`[bench-formats] ${msg}`);

/** BOS then ids 3, 4, 5, ... (the same ids node-llama-cpp's anchor uses by default). */
const promptIds = (n: number) => [1, ...Array.from({ length: n - 1 }, (_, i) => 3 + (i % (32000 - 3)))];

// ---- the child: ppsd AR on one package, one thread count ------------------------------------------

interface PpsdChildResult {
  prefillTokPerS: number;
  decodeTokPerS: Record<string, number>;
  generated: Record<string, number[]>;
  peakRssKb: number;
  dtype: string;
}

async function child(pkgDir: string, threads: number): Promise<PpsdChildResult> {
  const { loadPackage } = await import('../workers/engine/src/package');
  const { createOrtStage } = await import('../workers/engine/src/runtime');
  const { ArDecoder } = await import('../workers/engine/src/decode/ar');
  const { timeGeneration } = await import('../workers/engine/src/bench/harness');
  const pkg = await loadPackage(pkgDir, { verify: false });
  const c = pkg.model.config;
  const stage = await createOrtStage(pkg.model, { firstLayer: 0, endLayer: c.nLayers }, { threads });
  const ar = new ArDecoder([stage]);
  const prompt = Int32Array.from(promptIds(Math.max(promptLen, ...contexts)));
  await timeGeneration(ar, prompt.subarray(0, 64), 4); // warm-up
  const prefill: number[] = [];
  for (let i = 0; i < 2; i++)
    prefill.push((await timeGeneration(ar, prompt.subarray(0, promptLen), 1)).totalMs);
  const decodeTokPerS: Record<string, number> = {};
  const generated: Record<string, number[]> = {};
  for (const ctx of contexts) {
    const r = await timeGeneration(ar, prompt.subarray(0, ctx), gen + 1);
    decodeTokPerS[ctx] = (1000 * (r.tokens.length - 1)) / r.decodeMs;
    generated[ctx] = r.tokens;
  }
  await ar.close();
  const hwm = /VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'));
  return {
    prefillTokPerS: (1000 * promptLen) / Math.min(...prefill),
    decodeTokPerS,
    generated,
    peakRssKb: Number(hwm?.[1] ?? 0),
    dtype: pkg.manifest.dtype,
  };
}

// ---- the parent -------------------------------------------------------------------------------------

async function sh(args: string[]): Promise<void> {
  await exec(process.execPath, ['--import', 'tsx', ppsd, ...args, '--quiet'], { maxBuffer: 1 << 26 });
}

/** The f32 package, one GGUF per format, and each GGUF imported back as a package. */
async function ensureModels(): Promise<Record<string, { gguf: string; pkg: string }>> {
  await mkdir(work, { recursive: true });
  const f32 = path.join(work, 'llama2-110m-f32');
  if (!existsSync(f32)) {
    log('synthesizing the random-weight llama2-110m model (seed 0)');
    await sh(['synth', '--shape', 'llama2-110m', '--seed', '0', '--out', f32]);
  }
  const out: Record<string, { gguf: string; pkg: string }> = {};
  for (const fmt of formats) {
    const gguf = path.join(work, `llama2-110m.${fmt}.gguf`);
    const pkg = path.join(work, `llama2-110m-${fmt}-from-gguf`);
    if (!existsSync(gguf)) {
      log(`export-gguf --type ${fmt}`);
      await sh(['export-gguf', f32, '--type', fmt, '--out', gguf]);
    }
    if (!existsSync(pkg)) {
      log(`import --from ${path.basename(gguf)}`);
      await sh(['import', '--from', gguf, '--out', pkg]);
    }
    out[fmt] = { gguf, pkg };
  }
  return out;
}

async function runPpsd(pkg: string, threads: number): Promise<PpsdChildResult | { error: string }> {
  try {
    const { stdout } = await exec(
      process.execPath,
      [
        '--import',
        'tsx',
        path.join(root, 'scripts/bench-formats.ts'),
        ...childArgs(),
        '--child',
        `${pkg}::${threads}`,
      ],
      { maxBuffer: 1 << 26, timeout: 600_000 },
    );
    return JSON.parse(stdout.trim().split('\n').pop()!);
  } catch (err) {
    return { error: (err as Error).message.split('\n').slice(-3).join(' ') };
  }
}

const childArgs = () => ['--contexts', values.contexts, '--gen', values.gen, '--prompt', values.prompt];

async function main(): Promise<void> {
  const models = await ensureModels();
  const npm = await ensureNodeLlamaCpp({ log });
  const bench = await ensureLlamaBench({ log });
  if (!bench.ok) log(`llama-bench unavailable: ${bench.reason}`);
  if (!npm.ok) log(`node-llama-cpp unavailable: ${npm.reason}`);
  const runs: FormatRun[] = [];
  const load0 = os.loadavg();
  const started = Date.now();
  for (let round = 0; round < rounds; round++) {
    const order = formats.map((_, i) => formats[(i + round) % formats.length]);
    for (const fmt of order) {
      for (const threads of threadList) {
        const { gguf, pkg } = models[fmt];
        const p = await runPpsd(pkg, threads);
        runs.push({ engine: 'ppsd', format: fmt, threads, round, ...toRun(p) });
        if (bench.ok) {
          const pp = await runLlamaBench(bench.binary, gguf, {
            threads,
            nPrompt: promptLen,
            nGen: 0,
            repetitions: 1,
          });
          const decode: Record<string, number> = {};
          let peak = pp.ok ? pp.peakRssKb : undefined;
          let error = pp.ok ? undefined : pp.reason;
          for (const ctx of contexts) {
            const tg = await runLlamaBench(bench.binary, gguf, {
              threads,
              nPrompt: 0,
              nGen: gen,
              depth: ctx,
              repetitions: 1,
            });
            if (tg.ok && tg.decodeTokPerS !== undefined) decode[ctx] = tg.decodeTokPerS;
            else error ??= tg.ok ? 'no decode row' : tg.reason;
            if (tg.ok) peak = Math.max(peak ?? 0, tg.peakRssKb ?? 0);
          }
          runs.push({
            engine: 'llama-bench',
            format: fmt,
            threads,
            round,
            prefillTokPerS: pp.ok ? pp.prefillTokPerS : undefined,
            decodeTokPerS: decode,
            peakRssKb: peak,
            error,
          });
        }
        if (npm.ok) {
          const decode: Record<string, number> = {};
          let prefill: number | undefined;
          let peak: number | undefined;
          let error: string | undefined;
          for (const ctx of contexts) {
            const r = await runNodeLlamaCpp(gguf, {
              threads,
              contextSize: Math.max(promptLen, ctx) + gen + 8,
              promptTokens: promptLen,
              genTokens: gen,
              decodeDepth: ctx,
              promptIds: promptIds(Math.max(promptLen, ...contexts)),
              repetitions: 1,
            });
            if (!r.ok) {
              error = r.reason;
              break;
            }
            decode[ctx] = r.decodeTokPerS;
            prefill ??= r.prefillTokPerS;
            peak = Math.max(peak ?? 0, r.peakRssKb ?? 0);
          }
          runs.push({
            engine: 'node-llama-cpp',
            format: fmt,
            threads,
            round,
            prefillTokPerS: prefill,
            decodeTokPerS: decode,
            peakRssKb: peak,
            error,
          });
        }
        const last = runs
          .slice(-3)
          .map((r) => `${r.engine} ${fmtRun(r)}`)
          .join(' | ');
        log(`round ${round + 1}/${rounds} ${fmt} t${threads}: ${last}`);
      }
    }
  }
  const json: FormatsJson = {
    meta: {
      command: `node --import tsx scripts/bench-formats.ts --formats ${values.formats} --threads ${values.threads} --contexts ${values.contexts} --gen ${gen} --prompt ${promptLen} --rounds ${rounds}${values.write ? ' --write' : ''}`,
      model:
        'random-weight Llama-2 110M shape (ppsd synth --shape llama2-110m --seed 0: dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, tied)',
      cpu: os.cpus()[0]?.model ?? 'unknown',
      cores: os.cpus().length,
      node: process.version,
      date: new Date().toISOString(),
      seconds: Math.round((Date.now() - started) / 1000),
      loadBefore: load0,
      loadAfter: os.loadavg(),
      llamaCpp: bench.ok ? bench.tag : `unavailable: ${bench.reason}`,
      nodeLlamaCpp: npm.ok ? npm.version : `unavailable: ${npm.reason}`,
      contexts,
      gen,
      prompt: promptLen,
      rounds,
    },
    runs,
  };
  const md = formatsMarkdown(json);
  console.log(md);
  if (values.write) {
    await writeFile(
      path.join(root, 'docs/bench/formats-llama2-110m.json'),
      `${JSON.stringify(json, null, 1)}\n`,
    );
    await writeFile(path.join(root, 'docs/img/formats-vs-llamacpp.svg'), formatsChartSvg(json));
    const doc = path.join(root, 'docs/BENCHMARKS.md');
    const text = await readFile(doc, 'utf8');
    const START = '<!-- formats-bench:start -->';
    const END = '<!-- formats-bench:end -->';
    const section = `${START}\n${md}\n${END}`;
    const next = text.includes(START)
      ? text.replace(new RegExp(`${START}[\\s\\S]*?${END}`), section)
      : text.replace('<!-- service-bench:start -->', `${section}\n\n<!-- service-bench:start -->`);
    await writeFile(doc, next);
    log('wrote docs/BENCHMARKS.md, docs/bench/formats-llama2-110m.json, docs/img/formats-vs-llamacpp.svg');
  }
}

function toRun(
  p: PpsdChildResult | { error: string },
): Omit<FormatRun, 'engine' | 'format' | 'threads' | 'round'> {
  if ('error' in p) return { decodeTokPerS: {}, error: p.error };
  return {
    prefillTokPerS: p.prefillTokPerS,
    decodeTokPerS: p.decodeTokPerS,
    peakRssKb: p.peakRssKb,
    dtype: p.dtype,
  };
}

const fmtRun = (r: FormatRun) =>
  r.error
    ? `error: ${r.error.slice(0, 80)}`
    : `pp ${r.prefillTokPerS?.toFixed(0)} tg ${Object.values(r.decodeTokPerS)
        .map((v) => v.toFixed(1))
        .join('/')} rss ${((r.peakRssKb ?? 0) / 1024).toFixed(0)}M`;

if (values.child) {
  const [pkg, threads] = values.child.split('::');
  child(pkg, Number(threads)).then(
    (r) => {
      console.log(JSON.stringify(r));
      process.exit(0);
    },
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
