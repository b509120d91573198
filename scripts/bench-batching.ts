/**
 * Continuous batching benchmark: aggregate tokens/s and per-sequence inter-token latency of N concurrent
 * greedy sequences in one ppsd Engine, next to llama.cpp (node-llama-cpp, `createContext({ sequences: N })`)
 * on the same GGUF, in the same run, same threads.
 *
 *   node --import tsx scripts/bench-batching.ts [--concurrency 1,4,16,64] [--threads 2] [--decoders ar,ppsd] [--write]
 *
 * Model: the random-weight Llama-2 110M shape (`ppsd synth --shape llama2-110m --seq-len 2048 --seed 0`),
 * exported as Q4_0 GGUF (`ppsd export-gguf --type q4_0`) and imported back (`ppsd import`), so both
 * engines run the very same Q4_0 blocks. Cached under .data/bench-batching/. Random weights: the text
 * is noise; EOS/BOS are biased away (ppsd) or ignored (llama.cpp) so every sequence makes all its tokens.
 *
 * Workloads: `chat` = 64-token prompts, 128 new tokens; `summarize` = 1000-token documents, 128 new tokens.
 * ppsd decoders: `ar` = the batched AR step loop (one session, `threads` intra-op threads); `ppsd` = the
 * served PPSD pipeline (`threads` stage threads of one core each, decoder 'auto': it drafts only while
 * fewer sequences than stages are in flight, schedule/pipeline-server.ts). Random weights accept few
 * drafts: this is the pipeline's serving throughput, not its speculation.
 * ppsd: every sequence is submitted at once; its token times come from the stream (onTokens). Reported:
 * wall tokens/s (N x new tokens / wall time, prefill included), decode tokens/s (tokens after each
 * sequence's first / the time from the last first token to the end), TTFT p50, ITL p50 / p99.
 * llama.cpp: the harness's batched decode (all N sequences decode after the same prefilled context, prefill
 * untimed), so its tokens/s is decode-only; compare it with ppsd's decode tokens/s.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type ChartSeries, lineChartSvg } from '../workers/engine/src/bench/chart';
import { ensureNodeLlamaCpp, runNodeLlamaCpp } from '../workers/engine/src/bench/llamacpp';
import { Engine } from '../workers/engine/src/engine';
import { replaceSection, sectionMarkers } from './doc-section';

const root = path.resolve(import.meta.dirname, '..');
const work = path.join(root, '.data/bench-batching');
const { values } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '1,4,16,64' },
    threads: { type: 'string', default: '2' },
    workloads: { type: 'string', default: 'chat,summarize' },
    gen: { type: 'string', default: '128' },
    format: { type: 'string', default: 'q4_0' },
    write: { type: 'boolean', default: false },
    'no-llamacpp': { type: 'boolean', default: false },
    decoders: { type: 'string', default: 'ar,ppsd' },
  },
});
const concurrencies = values.concurrency.split(',').map(Number);
const threads = Number(values.threads);
const gen = Number(values.gen);
const format = values.format; // a GGUF type ppsd export-gguf writes: q4_0 (the fastest here), q8_0, f32
const WORKLOADS = { chat: 64, summarize: 1000 } as const;
type Workload = keyof typeof WORKLOADS;
const workloads = values.workloads.split(',') as Workload[];
type BenchDecoder = 'ar' | 'ppsd';
const decoders = values.decoders.split(',') as BenchDecoder[];
for (const d of decoders) if (d !== 'ar' && d !== 'ppsd') throw new Error(`--decoders: ar or ppsd, got ${d}`);
const log = (m: string) => process.stderr.write(`[bench-batching] ${m}\n`);

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

interface PpsdRow {
  wallTokPerS: number;
  decodeTokPerS: number;
  ttftP50Ms: number;
  itlP50Ms: number;
  itlP99Ms: number;
  maxBatchSeen: number;
}

/** A text whose prompt is exactly `n` tokens (BOS included), the same for every sequence but the first id. */
function promptOf(engine: Engine, n: number, salt: number): string {
  const words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'then', 'it', 'ran', 'far', 'away'];
  let text = `${salt}`;
  let i = salt;
  while (engine.countPromptTokens(text) < n) text += ` ${words[i++ % words.length]}`;
  while (engine.countPromptTokens(text) > n) text = text.slice(0, text.lastIndexOf(' '));
  return text;
}

async function runPpsd(engine: Engine, n: number, promptTokens: number): Promise<PpsdRow> {
  const prompts = Array.from({ length: n }, (_, i) => promptOf(engine, promptTokens, i));
  const noEnd = { 1: -100, 2: -100 }; // random weights: keep every sequence to its full length
  const before = { ...engine.schedulerStats().stepsByBatchSize };
  const times: number[][] = prompts.map(() => []);
  const t0 = performance.now();
  await Promise.all(
    prompts.map((p, i) =>
      engine.generate(p, { maxTokens: gen, temperature: 0, logitBias: noEnd, decoder: 'auto' }, (ev) => {
        const now = performance.now() - t0;
        for (let k = 0; k < ev.ids.length; k++) times[i].push(now);
      }),
    ),
  );
  const wall = (performance.now() - t0) / 1000;
  const firsts = times.map((t) => t[0]);
  const ends = times.map((t) => t[t.length - 1]);
  const itl = times.flatMap((t) => t.slice(1).map((x, k) => x - t[k]));
  const decodeSpan = (Math.max(...ends) - Math.max(...firsts)) / 1000;
  const after = engine.schedulerStats().stepsByBatchSize;
  const seen = Object.keys(after)
    .map(Number)
    .filter((k) => (after[k] ?? 0) > (before[k] ?? 0));
  return {
    wallTokPerS: (n * gen) / wall,
    decodeTokPerS: (n * (gen - 1)) / decodeSpan,
    ttftP50Ms: pct(firsts, 50),
    itlP50Ms: pct(itl, 50),
    itlP99Ms: pct(itl, 99),
    maxBatchSeen: Math.max(...seen),
  };
}

async function ensureModels(): Promise<{ gguf: string; pkg: string }> {
  const gguf = path.join(work, `llama2-110m.${format}.gguf`);
  const pkg = path.join(work, `llama2-110m-${format}`);
  if (!existsSync(gguf) || !existsSync(pkg)) {
    throw new Error(
      `missing ${gguf} or ${pkg}: create them with\n` +
        '  P="node --import tsx workers/engine/src/cli/main.ts"; D=.data/bench-batching\n' +
        '  $P synth --shape llama2-110m --seq-len 2048 --seed 0 --out $D/llama2-110m-f32\n' +
        `  $P export-gguf $D/llama2-110m-f32 --type ${format} --out $D/llama2-110m.${format}.gguf\n` +
        `  $P import --from $D/llama2-110m.${format}.gguf --out $D/llama2-110m-${format}`,
    );
  }
  return { gguf, pkg };
}

interface Cell {
  workload: Workload;
  n: number;
  decoder: BenchDecoder;
  ppsd: PpsdRow;
  llamacpp?: { decodeTokPerS: number; itlMeanMs: number } | { error: string };
}

async function main(): Promise<void> {
  await mkdir(work, { recursive: true });
  const { gguf, pkg } = await ensureModels();
  const started = Date.now();
  const load0 = loadavg();
  if (!values['no-llamacpp']) {
    const nlc = await ensureNodeLlamaCpp({ log });
    if (!nlc.ok) throw new Error(nlc.reason);
  }
  const maxN = Math.max(...concurrencies);
  const cells: Cell[] = [];
  for (const decoder of decoders) {
    const engine = await Engine.open(pkg, {
      maxBatch: maxN,
      verified: true,
      decoder,
      ...(decoder === 'ar' ? { threadsPerStage: threads } : { devices: Array(threads).fill('cpu') }),
    });
    try {
      for (const w of workloads) cells.push(...(await runWorkload(engine, decoder, w, maxN, gguf)));
    } finally {
      await engine.close();
    }
  }
  const md = report(cells, { seconds: (Date.now() - started) / 1000, load0, load1: loadavg() });
  process.stdout.write(`${md}\n`);
  // the committed results change together (data, chart, section), and only when asked to
  if (!values.write) return;
  const tag = format === 'q4_0' ? '' : `-${format}`;
  await writeFile(path.join(root, `docs/bench/batching${tag}.json`), `${JSON.stringify(cells, null, 2)}\n`);
  await writeFile(path.join(root, `docs/img/batching${tag}.svg`), chart(cells));
  await replaceSection(path.join(root, 'docs/BENCHMARKS.md'), MARKER, md);
}

/** One workload at every concurrency on `engine`; llama.cpp beside it in the first decoder's pass. */
async function runWorkload(
  engine: Engine,
  decoder: BenchDecoder,
  w: Workload,
  maxN: number,
  gguf: string,
): Promise<Cell[]> {
  const promptTokens = WORKLOADS[w];
  const cells: Cell[] = [];
  // warm every lane bucket's session (each is built on first use)
  await runPpsd(engine, maxN, 8).catch(() => undefined);
  for (const n of concurrencies) {
    log(`${w}: ppsd ${decoder}, ${n} sequences`);
    const ppsd = await runPpsd(engine, n, promptTokens);
    const cell: Cell = { workload: w, n, decoder, ppsd };
    if (!values['no-llamacpp'] && decoder === decoders[0]) {
      log(`${w}: llama.cpp, ${n} sequences`);
      const r = await runNodeLlamaCpp(gguf, {
        threads,
        contextSize: promptTokens + gen + 8, // per sequence (node-llama-cpp gives each its own)
        promptTokens: 0,
        decodeDepth: promptTokens,
        genTokens: gen,
        sequences: n,
        warmup: true,
      });
      cell.llamacpp =
        'decodeTokPerS' in r
          ? { decodeTokPerS: r.decodeTokPerS, itlMeanMs: (1000 * r.decodeSeconds[0]) / gen }
          : { error: r.reason };
    }
    log(JSON.stringify(cell));
    cells.push(cell);
  }
  return cells;
}

function report(cells: Cell[], run: { seconds: number; load0: number[]; load1: number[] }): string {
  const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const lines = [
    sectionMarkers(MARKER).start,
    `## Continuous batching (engine, N concurrent greedy sequences, ${format.toUpperCase()})`,
    '',
    `\`node --import tsx scripts/bench-batching.ts --format ${format} --concurrency ${concurrencies.join(',')} --threads ${threads} --workloads ${workloads.join(',')} --decoders ${decoders.join(',')} --write\``,
    '',
    `Random-weight Llama-2 110M shape, ${format.toUpperCase()}, one GGUF for both engines (ppsd imports it block for block). ${threads} threads each. ${cpus()[0]?.model ?? ''}, ${cpus().length} cores, Node ${process.version}, ${new Date().toISOString().slice(0, 16)}Z, ${f(run.seconds, 0)} s; load average before ${run.load0.map((x) => x.toFixed(2)).join(' ')}, after ${run.load1.map((x) => x.toFixed(2)).join(' ')}. One round (a single run per cell).`,
    '',
    'ppsd: all N sequences submitted at once to one Engine (maxBatch = the largest N); `wall` = N x new tokens / wall time (prefill included); `decode` = tokens after each first token / time from the last first token to the end; TTFT p50; ITL p50 / p99 over every sequence. llama.cpp: node-llama-cpp 3.22 `createContext({ sequences: N })`, all N decoding after the same prefilled context (prefill untimed), so compare its tokens/s with ppsd `decode`; its ITL is the mean step time.',
    '',
  ];
  const llamaAt = (w: Workload, n: number) => {
    const c = cells.find((x) => x.workload === w && x.n === n && x.llamacpp);
    return c?.llamacpp;
  };
  for (const w of new Set(cells.map((c) => c.workload))) {
    lines.push(
      `**${w}: ${WORKLOADS[w]}-token prompts, ${gen} new tokens**`,
      '',
      '| ppsd decoder | N | ppsd wall tok/s | ppsd decode tok/s | x 1 sequence | TTFT p50 ms | ITL p50 ms | ITL p99 ms | ITL p99 / 1-seq ITL | llama.cpp decode tok/s | llama.cpp ITL ms | ppsd / llama.cpp |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
    );
    for (const c of cells.filter((x) => x.workload === w)) {
      const one = cells.find((x) => x.workload === w && x.decoder === c.decoder && x.n === 1)?.ppsd;
      const lc = llamaAt(w, c.n);
      const l = lc && 'decodeTokPerS' in lc ? lc : undefined;
      const ratio = l ? c.ppsd.decodeTokPerS / l.decodeTokPerS : Number.NaN;
      lines.push(
        `| ${DECODER_LABEL[c.decoder]} | ${c.n} | ${f(c.ppsd.wallTokPerS)} | ${f(c.ppsd.decodeTokPerS)} | ${one ? f(c.ppsd.decodeTokPerS / one.decodeTokPerS, 2) : '-'} | ${f(c.ppsd.ttftP50Ms, 0)} | ${f(c.ppsd.itlP50Ms)} | ${f(c.ppsd.itlP99Ms)} | ${one ? f(c.ppsd.itlP99Ms / one.itlP50Ms, 2) : '-'} | ${l ? f(l.decodeTokPerS) : ((lc as { error?: string } | undefined)?.error ?? '-')} | ${l ? f(l.itlMeanMs) : '-'} | ${ratio >= 1 ? `**${f(ratio, 2)}**` : f(ratio, 2)} |`,
      );
    }
    lines.push('');
  }
  const tag = format === 'q4_0' ? '' : `-${format}`;
  lines.push(
    `![aggregate decode tokens/s vs concurrency](img/batching${tag}.svg)`,
    '',
    sectionMarkers(MARKER).end,
  );
  return lines.join('\n');
}

const DECODER_LABEL: Record<BenchDecoder, string> = { ar: 'AR, batched steps', ppsd: 'PPSD served pipeline' };

/** One section per weight format in docs/BENCHMARKS.md. */
const MARKER = `batching-bench-${format}`;

/** Aggregate decode tokens/s against concurrency (log2 axis), ppsd and llama.cpp per workload. */
function chart(cells: Cell[]): string {
  const colors = {
    chat: { ar: '#1f77b4', ppsd: '#2ca02c', llamacpp: '#9ecae1' },
    summarize: { ar: '#d62728', ppsd: '#ff7f0e', llamacpp: '#fc9272' },
  } as const;
  const series: ChartSeries[] = [];
  for (const w of new Set(cells.map((c) => c.workload))) {
    const rows = cells.filter((c) => c.workload === w);
    const x = (n: number) => Math.log2(n);
    for (const d of decoders) {
      series.push({
        name: `ppsd ${DECODER_LABEL[d]}, ${w}`,
        color: colors[w][d],
        shape: 'circle',
        points: rows.filter((c) => c.decoder === d).map((c) => ({ x: x(c.n), y: c.ppsd.decodeTokPerS })),
      });
    }
    const l = rows.filter((c) => c.llamacpp && 'decodeTokPerS' in c.llamacpp);
    series.push({
      name: `llama.cpp ${w}`,
      color: colors[w].llamacpp,
      dashed: true,
      shape: 'square',
      points: l.map((c) => ({ x: x(c.n), y: (c.llamacpp as { decodeTokPerS: number }).decodeTokPerS })),
    });
  }
  const yMax = Math.max(...series.flatMap((s) => s.points.map((p) => p.y)));
  return lineChartSvg(series, {
    title: `Aggregate decode tokens/s vs concurrent sequences (110M shape, ${format.toUpperCase()}, ${threads} threads)`,
    xLabel: 'log2 of concurrent sequences',
    yLabel: 'tokens/s',
    xRange: [0, Math.log2(Math.max(...cells.map((c) => c.n)))],
    yRange: [0, Math.ceil(yMax / 100) * 100],
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
