/**
 * Pipeline-parallel serving benchmark: N concurrent greedy sequences on one Engine, PPSD served by the
 * shared pipeline of batched stage threads (schedule/pipeline-server.ts) against the batched AR step
 * loop, and PPSD's draft rule (`speculateBelow`) forced on and off, in the same run.
 *
 *   node --import tsx scripts/bench-pipeline-serving.ts [--models stories,q4] [--concurrency 1,2,4,16]
 *       [--gen 64] [--alpha 0.8] [--rounds 1] [--write]
 *
 * With --rounds R every cell runs R times on its engine and the row is the round with the median decode
 * tokens/s (this 2-core box's noise moves single runs by 20-30%).
 *
 * Every engine gets the worker's CPU plan, one device per core (`devices: cpu x cores`): batched AR runs
 * one session with every core's thread; PPSD runs k = cores stages, one core each.
 * Models: stories260K (real weights: real acceptance of its exit head) and the random-weight Llama-2
 * 110M shape in Q4_0 (.data/bench-batching, see bench-batching.ts), whose drafts are forced to be
 * accepted at rate `alpha` (controlled acceptance: the numbers say what the pipeline does at that rate,
 * not what a trained model's head would reach).
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureStoriesPackage } from '../infra/local/seed';
import { type ChartSeries, lineChartSvg } from '../workers/engine/src/bench/chart';
import type { DecoderName } from '../workers/engine/src/decode/decoder';
import { Engine, type EngineOptions } from '../workers/engine/src/engine';
import { replaceSection, sectionMarkers } from './doc-section';

const root = path.resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    models: { type: 'string', default: 'stories,q4' },
    concurrency: { type: 'string', default: '1,2,4,16' },
    gen: { type: 'string', default: '64' },
    alpha: { type: 'string', default: '0.8' },
    rounds: { type: 'string', default: '1' },
    write: { type: 'boolean', default: false },
  },
});
const concurrencies = values.concurrency.split(',').map(Number);
const gen = Number(values.gen);
const alpha = Number(values.alpha);
const rounds = Number(values.rounds);
const cores = cpus().length;
const log = (m: string) => process.stderr.write(`[bench-pipeline-serving] ${m}\n`);
const NO_END = { 1: -100, 2: -100 }; // keep every sequence to its full length

interface Config {
  name: string;
  decoder: DecoderName;
  engine: Partial<EngineOptions>;
}
const CONFIGS: Config[] = [
  { name: 'AR, batched step loop', decoder: 'ar', engine: {} },
  { name: 'PPSD served, auto rule', decoder: 'ppsd', engine: {} },
  { name: 'PPSD served, always draft', decoder: 'ppsd', engine: { speculateBelow: 1e9 } },
  { name: 'PPSD served, never draft', decoder: 'ppsd', engine: { speculateBelow: 0 } },
  { name: 'PPSD alone (one at a time)', decoder: 'ppsd', engine: { servePipelines: false } },
];

interface Row {
  config: string;
  n: number;
  decodeTokPerS: number;
  wallTokPerS: number;
  itlP50Ms: number;
  itlP99Ms: number;
  acceptance: number;
  drafted: number;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : Number.NaN;
};

interface Model {
  key: string;
  label: string;
  pkg: string;
  prompts: string[];
  controlled: boolean;
}

async function models(): Promise<Model[]> {
  const out: Model[] = [];
  const words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'then', 'it', 'ran', 'far', 'away'];
  const prompts = (n: number) =>
    Array.from({ length: n }, (_, i) => `${i} ${words.slice(i % 6, (i % 6) + 6).join(' ')}`);
  for (const key of values.models.split(',')) {
    if (key === 'stories') {
      const pkg = path.join(root, '.data/bench-pipeline-serving/stories260K');
      await ensureStoriesPackage(pkg);
      const p = [
        'Once upon a time',
        'Lily and Ben went to the park.',
        'Tom had a red ball',
        'The sun was hot',
      ];
      const ps = Array.from({ length: 64 }, (_, i) => `${p[i % p.length]} ${words[i % words.length]}`);
      out.push({ key, label: 'stories260K (real weights)', pkg, prompts: ps, controlled: false });
    } else if (key === 'q4') {
      const pkg = path.join(root, '.data/bench-batching/llama2-110m-q4_0');
      if (!existsSync(pkg)) throw new Error(`missing ${pkg}: see scripts/bench-batching.ts`);
      out.push({
        key,
        label: `Llama-2 110M shape, Q4_0, random weights, controlled acceptance alpha = ${alpha}`,
        pkg,
        prompts: prompts(64),
        controlled: true,
      });
    } else throw new Error(`unknown model ${key} (stories, q4)`);
  }
  return out;
}

/** The greedy AR completion of each prompt (what controlled acceptance forces drafts towards). */
async function arTokens(model: Model, n: number): Promise<number[][]> {
  const engine = await Engine.open(model.pkg, { verified: true, maxBatch: n });
  try {
    const rs = await Promise.all(
      model.prompts
        .slice(0, n)
        .map((p) => engine.generate(p, { maxTokens: gen, temperature: 0, logitBias: NO_END, decoder: 'ar' })),
    );
    return rs.map((r) => r.tokens);
  } finally {
    await engine.close();
  }
}

async function runCell(engine: Engine, model: Model, cfg: Config, n: number, ar: number[][]): Promise<Row> {
  const times: number[][] = Array.from({ length: n }, () => []);
  const t0 = performance.now();
  const rs = await Promise.all(
    model.prompts.slice(0, n).map((p, i) =>
      engine.generate(
        p,
        {
          maxTokens: gen,
          temperature: 0,
          logitBias: NO_END,
          decoder: cfg.decoder === 'ppsd' ? 'auto' : cfg.decoder,
          controlledAcceptance:
            model.controlled && cfg.decoder !== 'ar' ? { alpha, seed: i, arTokens: ar[i] } : undefined,
        },
        (ev) => {
          const now = performance.now() - t0;
          for (let k = 0; k < ev.ids.length; k++) times[i].push(now);
        },
      ),
    ),
  );
  const wall = (performance.now() - t0) / 1000;
  rs.forEach((r, i) => {
    if (JSON.stringify(r.tokens) !== JSON.stringify(ar[i]))
      throw new Error(`${cfg.name}: sequence ${i} differs from AR`);
  });
  const firsts = times.map((t) => t[0]);
  const ends = times.map((t) => t[t.length - 1]);
  const itl = times.flatMap((t) => t.slice(1).map((x, k) => x - t[k]));
  const proposed = rs.reduce((s, r) => s + r.stats.draftTokensProposed, 0);
  const accepted = rs.reduce((s, r) => s + r.stats.draftTokensAccepted, 0);
  return {
    config: cfg.name,
    n,
    decodeTokPerS: (n * (gen - 1)) / ((Math.max(...ends) - Math.max(...firsts)) / 1000),
    wallTokPerS: (n * gen) / wall,
    itlP50Ms: pct(itl, 50),
    itlP99Ms: pct(itl, 99),
    acceptance: proposed ? accepted / proposed : Number.NaN,
    drafted: proposed / (n * gen),
  };
}

async function benchModel(model: Model): Promise<Row[]> {
  const maxN = Math.max(...concurrencies);
  log(`${model.key}: AR reference completions`);
  const ar = await arTokens(model, maxN);
  const rows: Row[] = [];
  for (const cfg of CONFIGS) {
    const engine = await Engine.open(model.pkg, {
      verified: true,
      maxBatch: maxN,
      devices: Array(cores).fill('cpu'),
      decoder: cfg.decoder,
      ...cfg.engine,
    });
    try {
      await runCell(engine, model, cfg, Math.min(2, maxN), ar); // warm-up (sessions, JIT)
      for (const n of concurrencies) {
        const runs: Row[] = [];
        for (let r = 0; r < rounds; r++) runs.push(await runCell(engine, model, cfg, n, ar));
        runs.sort((a, b) => a.decodeTokPerS - b.decodeTokPerS);
        const row = runs[Math.floor(runs.length / 2)];
        log(
          `${model.key} ${JSON.stringify(row)} (decode tok/s over rounds: ${runs.map((x) => x.decodeTokPerS.toFixed(0)).join(' ')})`,
        );
        rows.push(row);
      }
    } finally {
      await engine.close();
    }
  }
  return rows;
}

const MARKER = 'pipeline-serving-bench';

function report(results: { model: Model; rows: Row[] }[], seconds: number, load: number[][]): string {
  const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const lines = [
    sectionMarkers(MARKER).start,
    '## Pipeline-parallel serving (PPSD across sequences)',
    '',
    `\`node --import tsx scripts/bench-pipeline-serving.ts --models ${values.models} --concurrency ${concurrencies.join(',')} --gen ${gen} --alpha ${alpha}${rounds > 1 ? ` --rounds ${rounds}` : ''} --write\``,
    '',
    `${cpus()[0]?.model ?? ''}, ${cores} cores, Node ${process.version}, ${new Date().toISOString().slice(0, 16)}Z, ${f(seconds, 0)} s; load average before ${load[0].map((x) => x.toFixed(2)).join(' ')}, after ${load[1].map((x) => x.toFixed(2)).join(' ')}. ${rounds > 1 ? `Each cell: the median of ${rounds} rounds by decode tokens/s.` : 'One run per cell.'} N greedy sequences submitted at once, ${gen} new tokens each, every output checked equal to AR's. Engines get one CPU device per core: batched AR runs one session on all ${cores} cores, PPSD k = ${cores} stage threads of one core each. \`decode\` = tokens after each first token / time from the last first token to the end.`,
    '',
  ];
  for (const { model, rows } of results) {
    lines.push(
      `**${model.label}**`,
      '',
      '| configuration | N | decode tok/s | x AR at N | wall tok/s | ITL p50 ms | ITL p99 ms | drafts judged per token | acceptance |',
      '|---|---|---|---|---|---|---|---|---|',
    );
    for (const r of rows) {
      const base = rows.find((x) => x.config === CONFIGS[0].name && x.n === r.n);
      const x = base ? r.decodeTokPerS / base.decodeTokPerS : Number.NaN;
      lines.push(
        `| ${r.config} | ${r.n} | ${f(r.decodeTokPerS)} | ${x >= 1.05 ? `**${f(x, 2)}**` : f(x, 2)} | ${f(r.wallTokPerS)} | ${f(r.itlP50Ms)} | ${f(r.itlP99Ms)} | ${f(r.drafted, 2)} | ${f(r.acceptance, 2)} |`,
      );
    }
    lines.push('', `![decode tokens/s vs concurrency](img/pipeline-serving-${model.key}.svg)`, '');
  }
  lines.push(sectionMarkers(MARKER).end);
  return lines.join('\n');
}

function chart(model: Model, rows: Row[]): string {
  const colors = ['#1f77b4', '#d62728', '#ff7f0e', '#2ca02c', '#7f7f7f'];
  const series: ChartSeries[] = CONFIGS.map((c, i) => ({
    name: c.name,
    color: colors[i],
    dashed: i === 0,
    shape: i === 0 ? 'square' : 'circle',
    points: rows.filter((r) => r.config === c.name).map((r) => ({ x: Math.log2(r.n), y: r.decodeTokPerS })),
  }));
  const yMax = Math.max(...rows.map((r) => r.decodeTokPerS));
  return lineChartSvg(series, {
    title: `Decode tokens/s vs concurrent sequences: ${model.label}`,
    xLabel: 'log2 of concurrent sequences',
    yLabel: 'tokens/s',
    xRange: [0, Math.log2(Math.max(...concurrencies))],
    yRange: [0, Math.ceil(yMax / 100) * 100],
  });
}

async function main(): Promise<void> {
  const started = Date.now();
  const load0 = loadavg();
  const results: { model: Model; rows: Row[] }[] = [];
  for (const model of await models()) results.push({ model, rows: await benchModel(model) });
  const md = report(results, (Date.now() - started) / 1000, [load0, loadavg()]);
  process.stdout.write(`${md}\n`);
  await mkdir(path.join(root, 'docs/bench'), { recursive: true });
  await writeFile(
    path.join(root, 'docs/bench/pipeline-serving.json'),
    `${JSON.stringify(
      results.map((r) => ({ model: r.model.label, rows: r.rows })),
      null,
      2,
    )}\n`,
  );
  for (const { model, rows } of results)
    await writeFile(path.join(root, `docs/img/pipeline-serving-${model.key}.svg`), chart(model, rows));
  if (values.write) await replaceSection(path.join(root, 'docs/BENCHMARKS.md'), MARKER, md);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
