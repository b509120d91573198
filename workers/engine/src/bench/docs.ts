/**
 * Rewrites the decoder-benchmark section of docs/BENCHMARKS.md (between the decoder-bench markers; the
 * rest of the file belongs to others and is kept byte for byte) and the speedup-vs-alpha chart, from
 * saved `ppsd bench --json` results.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { defaultSkipSet } from '../decode/dv';
import type { LlamaConfig, SkipSet } from '../model/llama';
import { anchorTable, type LlamaCppAnchorResult } from './anchor';
import { type ChartSeries, lineChartSvg } from './chart';
import type { RunRecord } from './harness';
import { dvSpeedup, eesdSpeedup, pipelineSpeedup } from './ideal';
import { markdownTable, type Summary, summarize } from './report';
import type { StageProbe } from './stage-probe';

export const START = '<!-- decoder-bench:start -->';
export const END = '<!-- decoder-bench:end -->';

interface BenchJson {
  meta: {
    package: string;
    /** The package's weight dtype (absent in results saved before per-tensor dtypes: f32). */
    dtype?: string;
    /** llama.cpp's AR on the same GGUF (`ppsd bench --llamacpp`). */
    llamacpp?: LlamaCppAnchorResult;
    synthetic: boolean;
    acceptanceMode: 'real' | 'controlled';
    stages: number;
    boundaries: number[];
    exitLayer: number;
    exitHead: string;
    split?: string;
    draftVocab?: string;
    stageMacs?: number[];
    spdDrafter: string;
    skipSet: unknown;
    maxTokens: number;
    repeats: number;
    prompts: string[];
    machine: { cpu?: string; cores: number; loadavgBefore: number[]; loadavgAfter: number[] };
    date: string;
    wallSeconds: number;
    command: string;
    config: LlamaConfig;
    skipSetSource?: string;
  };
  summaries: Summary[];
  /** Stage probes by row label (absent in results saved before the probe existed). */
  probes?: Record<string, StageProbe>;
  records: RunRecord[];
}

/** Recomputes the summaries from the saved runs (so the arithmetic is the current code's). */
function resummarize(r: BenchJson): void {
  const m = r.meta;
  const skip: SkipSet =
    typeof m.skipSet === 'object' && m.skipSet !== null
      ? (m.skipSet as SkipSet)
      : defaultSkipSet(m.config.nLayers);
  if (typeof m.skipSet !== 'object') {
    m.skipSetSource = 'default (decode/dv.ts defaultSkipSet)';
    m.skipSet = skip;
  }
  r.summaries = summarize(r.records, {
    config: m.config,
    stages: m.stages,
    boundaries: m.boundaries,
    exitLayer: m.exitLayer,
    skipSet: skip,
    probes: r.probes,
  });
}

const COLORS: Record<string, string> = {
  eesd: '#d62728',
  dv: '#9467bd',
  ppsd: '#1f77b4',
  spd: '#2ca02c',
  'ar-all-cores': '#7f7f7f',
};

/** Replaces (or appends) the marked section of `doc`. */
export function replaceSection(doc: string, body: string): string {
  const section = `${START}\n${body.trim()}\n${END}`;
  const a = doc.indexOf(START);
  const b = doc.indexOf(END);
  if (a >= 0 && b > a) return doc.slice(0, a) + section + doc.slice(b + END.length);
  return `${doc.trimEnd()}${doc.trim() ? '\n\n' : ''}${section}\n`;
}

/** PPSD's own plan when it differs from the setup's (a split inside a layer), from the runs' stats. */
function ppsdPlanNote(r: BenchJson): string {
  const plan = r.summaries.find((x) => x.label === 'ppsd')?.plan;
  if (!plan || plan.splitLayer === undefined) return '';
  return `; PPSD splits inside layer ${plan.splitLayer} (its attention ends stage 1, where the exit head reads the hidden state; its MLP starts stage 2), modelled cost per stage ${plan.stageMacs.map((x) => `${(x / 1e6).toFixed(1)}M`).join(' / ')}`;
}

/** Where the time goes for the pipeline rows, in words. */
export function timeNotes(s: Summary[], k: number): string[] {
  const ar = s.find((x) => x.label === 'ar-1core');
  const lines: string[] = [];
  for (const x of s.filter((y) => y.msPerTick !== undefined)) {
    const busy = x.stages!.map((st) => `${(100 * st.busyFraction).toFixed(0)}%`).join(' / ');
    const arMs = ar ? 1000 / ar.tokensPerSecond : Number.NaN;
    const perStage = x.stageBusyPerTickMs
      ? ` (each stage's run per tick: ${x.stageBusyPerTickMs.map((b) => b.toFixed(2)).join(' / ')} ms)`
      : '';
    const plan = x.plan
      ? `; plan [${x.plan.boundaries.join(', ')}] (${x.plan.split}${x.plan.draftRows !== undefined ? `, draft head ${x.plan.draftRows} rows` : ''}), modelled MACs per stage ${x.plan.stageMacs.map((m) => `${(m / 1e6).toFixed(m < 1e6 ? 3 : 1)}M`).join(' / ')}`
      : '';
    const c = x.ceiling;
    const ms = (v: number[]) => v.map((t) => t.toFixed(2)).join(' / ');
    const ceiling = c
      ? ` Machine ceiling (stage probe): the stages' runs take ${ms(c.probe.aloneMs)} ms alone and ${ms(c.probe.togetherMs)} ms all looping at once (${c.slowdown.map((r) => `${r >= 1 ? '+' : ''}${(100 * (r - 1)).toFixed(0)}%`).join(' / ')}; on a CPU the cores share the memory bandwidth every weight-streaming forward needs), ${ms(c.probe.lockstepMs)} ms in lockstep (all starting together, each round waiting for the slowest, no messaging), so no tick can be shorter than ${c.floorTickMs.toFixed(2)} ms; with each rejection's refill at stage 1's run alone, the best possible at this acceptance is ${c.speedup.toFixed(2)}x, efficiency ${c.efficiency.toFixed(2)} (measured ${x.efficiency?.toFixed(2) ?? '-'}).`
      : '';
    lines.push(
      `- ${x.label}${x.alpha !== null ? ` (alpha ${x.alpha})` : ''}: ${x.msPerTick!.toFixed(3)} ms per tick, of which the slowest stage's run computes ${x.maxStageBusyPerTickMs!.toFixed(3)} ms${perStage} and ${x.overheadPerTickMs!.toFixed(3)} ms is messaging, control and drafting on the critical path (AR on one core: ${arMs.toFixed(3)} ms per token, so an ideal tick is ${(arMs / k).toFixed(3)} ms); stages busy ${busy} of the generation${plan}.${ceiling}`,
    );
  }
  return lines;
}

function chartSeries(controlled: BenchJson | undefined, real: BenchJson | undefined): ChartSeries[] {
  const series: ChartSeries[] = [];
  const grid = Array.from({ length: 21 }, (_, i) => i / 20);
  if (controlled) {
    const k = controlled.meta.stages;
    series.push({
      name: `ideal PPSD/SPD, k=${k}`,
      color: '#1f77b4',
      dashed: true,
      points: grid.map((a) => ({ x: a, y: pipelineSpeedup(a, k) })),
    });
    const sums = controlled.summaries;
    const ee = sums.filter((x) => x.label === 'eesd' && x.draftsPerBlock !== null);
    if (ee.length > 0) {
      const gamma = ee.reduce((a, x) => a + x.draftsPerBlock!, 0) / ee.length;
      const c = controlled.meta.exitLayer / controlled.meta.config.nLayers;
      series.push({
        name: `ideal EESD (gamma ${gamma.toFixed(1)})`,
        color: COLORS.eesd,
        dashed: true,
        points: grid.map((a) => ({ x: a, y: eesdSpeedup(a, gamma, c) })),
      });
    }
    const dv = sums.filter((x) => x.label === 'dv' && x.draftsPerBlock !== null && x.idealFormula);
    if (dv.length > 0) {
      const gamma = dv.reduce((a, x) => a + x.draftsPerBlock!, 0) / dv.length;
      const c = Number(/c=([\d.]+)/.exec(dv[0].idealFormula!)?.[1] ?? 'NaN');
      if (Number.isFinite(c))
        series.push({
          name: `ideal DV (gamma ${gamma.toFixed(1)})`,
          color: COLORS.dv,
          dashed: true,
          points: grid.map((a) => ({ x: a, y: dvSpeedup(a, gamma, c) })),
        });
    }
    const ceiling = sums
      .filter((x) => x.label === 'ppsd' && x.ceiling && x.acceptance !== null)
      .map((x) => ({ x: x.acceptance!, y: x.ceiling!.speedup }));
    if (ceiling.length > 0)
      series.push({
        name: 'ppsd ceiling (stage probe)',
        color: COLORS.ppsd,
        markers: true,
        shape: 'square',
        points: ceiling.sort((a, b) => a.x - b.x),
      });
    for (const label of ['eesd', 'dv', 'ppsd', 'spd']) {
      const pts = sums
        .filter((x) => x.label === label && x.alpha !== null)
        .map((x) => ({ x: x.acceptance ?? x.alpha!, y: x.speedupVsAr1 }));
      if (pts.length > 0)
        series.push({
          name: `${label} (110M shape, controlled)`,
          color: COLORS[label],
          markers: true,
          points: pts.sort((a, b) => a.x - b.x),
        });
    }
  }
  if (real) {
    for (const x of real.summaries) {
      if (x.acceptance === null || !(x.label in COLORS)) continue;
      series.push({
        name: `${x.label} (stories260K, real)`,
        color: COLORS[x.label],
        markers: true,
        shape: 'diamond',
        points: [{ x: x.acceptance, y: x.speedupVsAr1 }],
      });
    }
  }
  return series;
}

export async function writeBenchDocs(
  files: string[],
  docsPath: string,
  chartPath: string,
  notesPath?: string,
): Promise<void> {
  const results: BenchJson[] = [];
  for (const f of files) {
    const r = JSON.parse(await readFile(f, 'utf8')) as BenchJson;
    resummarize(r);
    results.push(r);
  }
  const real = results.find((r) => r.meta.acceptanceMode === 'real');
  const controlled = results.find((r) => r.meta.acceptanceMode === 'controlled');
  const notesFile = notesPath ?? path.join(path.dirname(docsPath), 'bench/decoder-notes.md');
  let notes = '';
  try {
    notes = (await readFile(notesFile, 'utf8')).trim();
  } catch {}
  const parts: string[] = ['## Decoder benchmark (`ppsd bench`)', ''];
  parts.push(
    'Every decoder runs the same prompts in one process, interleaved round-robin (AR on one core and AR with all',
    "the pipeline's cores first in every round, then the speculative decoders in a rotated order), greedy, repeated;",
    'tokens/s is measured from the first token to the last (prefill excluded) and is the median over repeats of all',
    "prompts pooled. Acceptance comes from the decoders' own counters. Ideal speedups are the design note's at the",
    'measured acceptance: k/(alpha+(1-alpha)k) for PPSD and SPD, the EESD formula with the measured mean draft length',
    'and c = E/N, and the same form for DV with c = the share of layer multiply-adds its draft keeps.',
    '**Efficiency = measured speedup over AR on one core / ideal speedup.** Outputs are checked token for token',
    'against AR (a row would say NOT LOSSLESS otherwise).',
    '',
  );
  for (const r of results) {
    const m = r.meta;
    parts.push(
      `### ${m.acceptanceMode === 'controlled' ? 'Controlled acceptance' : 'Real acceptance'}: ${m.package} (${m.dtype ?? 'f32'}${m.synthetic ? ', random weights' : ''})`,
      '',
    );
    if (m.acceptanceMode === 'controlled') {
      parts.push(
        '**Controlled acceptance** (labelled as such): the model has random weights, so its drafts mean nothing; every',
        'drafter still runs in full, but its token is replaced by the known AR token with probability alpha and by a',
        'wrong token otherwise. Acceptance below is what the decoders counted.',
        '',
      );
    }
    parts.push(
      `Plan: k = ${m.stages} stages, layers [${m.boundaries.join(', ')}]${m.split ? ` (${m.split} split${m.stageMacs ? `, modelled cost per stage ${m.stageMacs.map((x) => `${(x / 1e6).toFixed(x < 1e6 ? 3 : 1)}M`).join(' / ')} MAC-equivalents` : ''})` : ''}; ${m.exitHead}${m.draftVocab ? `; PPSD draft head: ${m.draftVocab}` : ''}${ppsdPlanNote(r)}; SPD: ${m.spdDrafter}; DV skip set: ${JSON.stringify(m.skipSet)}${m.skipSetSource ? ` (${m.skipSetSource})` : ''}.`,
      `${m.maxTokens} tokens per generation, ${m.prompts.length} prompts, ${m.repeats} repeats; ${m.machine.cores} cores (${m.machine.cpu ?? 'cpu'}); load average before ${m.machine.loadavgBefore.map((x) => x.toFixed(2)).join(' ')}, after ${m.machine.loadavgAfter.map((x) => x.toFixed(2)).join(' ')}; ${m.date.slice(0, 16)}Z, ${m.wallSeconds} s.`,
      '',
      '```',
      `npm run ppsd -- ${m.command.replace(/^ppsd /, '')}`,
      '```',
      '',
      markdownTable(r.summaries, { controlled: m.acceptanceMode === 'controlled' }),
      '',
      ...(m.llamacpp ? [anchorTable(r.summaries, m.llamacpp, m.stages), ''] : []),
      'Where the time goes (pipelines; a tick is one stage forward for one token plus its messages):',
      '',
      ...timeNotes(r.summaries, m.stages),
      '',
    );
  }
  const svg = lineChartSvg(chartSeries(controlled, real), {
    title: 'Speedup over AR (one core) against acceptance alpha',
    xLabel: 'acceptance alpha (measured)',
    yLabel: 'speedup over AR on one core',
    xRange: [0, 1],
    yRange: [0, 2.2],
    notes: [
      'Dashed: ideal speedup at k and measured draft lengths. Circles: 110M-shape random model, controlled acceptance.',
      'Squares: the best PPSD could do on this machine (its stages timed running together, no messaging).',
      'Diamonds: stories260K with its calibrated head (real acceptance). Same machine, one run each.',
    ],
  });
  await mkdir(path.dirname(chartPath), { recursive: true });
  await writeFile(chartPath, svg);
  const rel = path.relative(path.dirname(docsPath), chartPath).split(path.sep).join('/');
  parts.push(`![speedup against alpha](${rel})`, '');
  if (notes) parts.push(notes, '');
  let doc = '';
  try {
    doc = await readFile(docsPath, 'utf8');
  } catch {
    doc = '# Benchmarks\n';
  }
  await writeFile(docsPath, replaceSection(doc, parts.join('\n')));
}
