/**
 * Tables and chart for scripts/bench-formats.ts: ppsd's AR next to llama.cpp (llama-bench and
 * node-llama-cpp) per weight format and thread count. Ratios are taken round by round (each ppsd run
 * against the anchor run right after it), then the median over rounds is reported with its spread.
 */
import { median } from './stats';

export type Engine = 'ppsd' | 'llama-bench' | 'node-llama-cpp';

export interface FormatRun {
  engine: Engine;
  format: string;
  threads: number;
  round: number;
  prefillTokPerS?: number;
  /** Decode tokens/s keyed by the context length it ran after. */
  decodeTokPerS: Record<string, number>;
  peakRssKb?: number;
  dtype?: string;
  error?: string;
}

export interface FormatsJson {
  meta: {
    command: string;
    model: string;
    cpu: string;
    cores: number;
    node: string;
    date: string;
    seconds: number;
    loadBefore: number[];
    loadAfter: number[];
    llamaCpp: string;
    nodeLlamaCpp: string;
    contexts: number[];
    gen: number;
    prompt: number;
    rounds: number;
  };
  runs: FormatRun[];
}

type Metric = (r: FormatRun) => number | undefined;

const spread = (xs: number[], digits: number): string => {
  if (xs.length === 0) return '-';
  const m = median(xs).toFixed(digits);
  if (xs.length === 1) return m;
  return `${m} (${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)})`;
};

function values(
  runs: FormatRun[],
  engine: Engine,
  format: string,
  threads: number,
  metric: Metric,
): number[] {
  return runs
    .filter((r) => r.engine === engine && r.format === format && r.threads === threads)
    .map(metric)
    .filter((v): v is number => v !== undefined && Number.isFinite(v));
}

/** ppsd / anchor per round, for rounds where both have the metric. */
export function ratios(
  runs: FormatRun[],
  anchor: Engine,
  format: string,
  threads: number,
  metric: Metric,
): number[] {
  const out: number[] = [];
  for (const p of runs.filter((r) => r.engine === 'ppsd' && r.format === format && r.threads === threads)) {
    const a = runs.find(
      (r) => r.engine === anchor && r.format === format && r.threads === threads && r.round === p.round,
    );
    const x = metric(p);
    const y = a && metric(a);
    if (x !== undefined && y !== undefined && y > 0) out.push(x / y);
  }
  return out;
}

const firstError = (runs: FormatRun[], engine: Engine) =>
  runs.find((r) => r.engine === engine && r.error)?.error;

function table(
  json: FormatsJson,
  title: string,
  metric: Metric,
  digits: number,
  higherIsBetter: boolean,
): string {
  const { runs } = json;
  const formats = [...new Set(runs.map((r) => r.format))];
  const threads = [...new Set(runs.map((r) => r.threads))].sort();
  const rows = [
    `| format | threads | ppsd | llama-bench | node-llama-cpp | ppsd / llama-bench | ppsd / node-llama-cpp |`,
    `|---|---|---|---|---|---|---|`,
  ];
  for (const f of formats) {
    for (const t of threads) {
      const cell = (e: Engine) => spread(values(runs, e, f, t, metric), digits);
      const ratio = (e: Engine) => {
        const r = ratios(runs, e, f, t, metric);
        if (r.length === 0) return '-';
        const m = median(r);
        const ok = higherIsBetter ? m >= 1 : m <= 1.25;
        const text = spread(r, 2);
        return ok ? `**${text}**` : text;
      };
      rows.push(
        `| ${f.toUpperCase()} | ${t} | ${cell('ppsd')} | ${cell('llama-bench')} | ${cell('node-llama-cpp')} | ${ratio('llama-bench')} | ${ratio('node-llama-cpp')} |`,
      );
    }
  }
  return `**${title}**\n\n${rows.join('\n')}`;
}

export function formatsMarkdown(json: FormatsJson): string {
  const m = json.meta;
  const parts = [
    '## Weight formats vs llama.cpp (plain AR, same GGUF file)',
    '',
    `\`${m.command}\``,
    '',
    `${m.model}, written as one GGUF per format by \`ppsd export-gguf\` and imported by \`ppsd import --from X.gguf\` ` +
      `(Q8_0/Q4_0 blocks kept as they are). llama.cpp ${m.llamaCpp}: \`llama-bench\` built from the source node-llama-cpp ` +
      `bundles (Release, native CPU), and node-llama-cpp ${m.nodeLlamaCpp} with its CPU prebuilt. ${m.cpu}, ${m.cores} cores, ` +
      `Node ${m.node}, ${m.date.slice(0, 16)}Z, ${m.seconds} s; load average before ${m.loadBefore.map((x) => x.toFixed(2)).join(' ')}, ` +
      `after ${m.loadAfter.map((x) => x.toFixed(2)).join(' ')}.`,
    '',
    `${m.rounds} interleaved rounds; in each, every (format, threads) runs ppsd, llama-bench and node-llama-cpp back to back, ` +
      'each in its own process. Cells: median over rounds (min-max). Ratios: ppsd over the anchor run right after it, per round; ' +
      "**bold** where the target holds (speed ratio >= 1.0; RSS ratio <= 1.25). ppsd runs the engine's AR decoder (one ORT " +
      'session, q8/q4 through MatMulNBits with accuracy_level 4; f16 weights run as f32 on the CPU provider, see below).',
    '',
    table(
      json,
      `Decode tokens/s, ${m.gen} greedy tokens after a context of ${m.contexts[0]}`,
      (r) => r.decodeTokPerS[m.contexts[0]],
      1,
      true,
    ),
  ];
  for (const c of m.contexts.slice(1)) {
    parts.push(
      '',
      table(
        json,
        `Decode tokens/s, ${m.gen} greedy tokens after a context of ${c}`,
        (r) => r.decodeTokPerS[c],
        1,
        true,
      ),
    );
  }
  parts.push(
    '',
    table(
      json,
      `Prefill tokens/s, a ${m.prompt}-token prompt from an empty context`,
      (r) => r.prefillTokPerS,
      0,
      true,
    ),
    '',
    table(
      json,
      'Peak RSS, MiB (VmHWM of the process: model, runtime and buffers)',
      (r) => r.peakRssKb && r.peakRssKb / 1024,
      0,
      false,
    ),
  );
  const errors = (['ppsd', 'llama-bench', 'node-llama-cpp'] as Engine[])
    .map((e) => [e, firstError(json.runs, e)] as const)
    .filter(([, err]) => err);
  if (errors.length) parts.push('', ...errors.map(([e, err]) => `- ${e} failed in some runs: ${err}`));
  parts.push('', '![ppsd vs llama.cpp decode tokens/s per format](img/formats-vs-llamacpp.svg)');
  return parts.join('\n');
}

/** Grouped bars: decode tok/s at the first context, per format, for each engine and thread count. */
export function formatsChartSvg(json: FormatsJson): string {
  const ctx = json.meta.contexts[0];
  const formats = [...new Set(json.runs.map((r) => r.format))];
  const threads = [...new Set(json.runs.map((r) => r.threads))].sort();
  const engines: { engine: Engine; color: string }[] = [
    { engine: 'ppsd', color: '#1f77b4' },
    { engine: 'llama-bench', color: '#d62728' },
    { engine: 'node-llama-cpp', color: '#ff9896' },
  ];
  const bars = threads.flatMap((t) => engines.map((e) => ({ ...e, threads: t })));
  const val = (f: string, b: (typeof bars)[number]) => {
    const xs = values(json.runs, b.engine, f, b.threads, (r) => r.decodeTokPerS[ctx]);
    return xs.length ? median(xs) : 0;
  };
  const maxV = Math.max(1, ...formats.flatMap((f) => bars.map((b) => val(f, b))));
  const W = 860;
  const H = 420;
  const m = { l: 60, r: 200, t: 40, b: 50 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const gw = pw / formats.length;
  const bw = (gw * 0.8) / bars.length;
  const Y = (v: number) => m.t + ph - (v / maxV) * ph;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="22" font-size="15">Decode tokens/s after ${ctx} tokens, Llama-2 110M shape (random weights), same GGUF</text>`,
    `<line x1="${m.l}" y1="${m.t + ph}" x2="${m.l + pw}" y2="${m.t + ph}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${m.t + ph}" stroke="black"/>`,
  ];
  for (let i = 0; i <= 5; i++) {
    const v = (maxV * i) / 5;
    out.push(
      `<text x="${m.l - 6}" y="${Y(v) + 4}" text-anchor="end">${v.toFixed(0)}</text>`,
      `<line x1="${m.l}" y1="${Y(v)}" x2="${m.l + pw}" y2="${Y(v)}" stroke="#ddd"/>`,
    );
  }
  formats.forEach((f, fi) => {
    const x0 = m.l + fi * gw + gw * 0.1;
    bars.forEach((b, bi) => {
      const v = val(f, b);
      const x = x0 + bi * bw;
      const opacity = b.threads === threads[0] ? 1 : 0.55;
      out.push(
        `<rect x="${x.toFixed(1)}" y="${Y(v).toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${(m.t + ph - Y(v)).toFixed(1)}" fill="${b.color}" fill-opacity="${opacity}"/>`,
      );
    });
    out.push(
      `<text x="${(x0 + gw * 0.4).toFixed(1)}" y="${m.t + ph + 18}" text-anchor="middle">${f.toUpperCase()}</text>`,
    );
  });
  bars.forEach((b, i) => {
    const y = m.t + 10 + i * 20;
    const opacity = b.threads === threads[0] ? 1 : 0.55;
    out.push(
      `<rect x="${m.l + pw + 16}" y="${y - 10}" width="14" height="14" fill="${b.color}" fill-opacity="${opacity}"/>`,
      `<text x="${m.l + pw + 36}" y="${y + 1}">${b.engine}, ${b.threads} thread${b.threads > 1 ? 's' : ''}</text>`,
    );
  });
  out.push(
    `<text x="${m.l}" y="${H - 12}" fill="#555">${json.meta.cpu}; medians of ${json.meta.rounds} interleaved rounds</text>`,
    '</svg>',
  );
  return `${out.join('\n')}\n`;
}
