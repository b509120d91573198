import { describe, expect, it } from 'vitest';
import { lineChartSvg } from '../../workers/engine/src/bench/chart';
import { END, replaceSection, START } from '../../workers/engine/src/bench/docs';
import { type RunRecord, runHarness } from '../../workers/engine/src/bench/harness';
import {
  dvSpeedup,
  eesdSpeedup,
  efficiency,
  expectedBlockTokens,
  pipelineSpeedup,
  planSpeedup,
} from '../../workers/engine/src/bench/ideal';
import {
  markdownTable,
  medianRate,
  pooledRate,
  skipCostFraction,
  summarize,
} from '../../workers/engine/src/bench/report';
import { median } from '../../workers/engine/src/bench/stats';
import type { DecodeRequest, Decoder, SpeculationStats } from '../../workers/engine/src/decode/decoder';
import { llamaConfig } from '../../workers/engine/src/model/random';

describe('ideal speedups', () => {
  it("match the design note's table", () => {
    const table: Record<number, number[]> = {
      2: [1.33, 1.54, 1.67, 1.82, 1.9],
      4: [1.6, 2.11, 2.5, 3.08, 3.48],
      8: [1.78, 2.58, 3.33, 4.71, 5.93],
    };
    const alphas = [0.5, 0.7, 0.8, 0.9, 0.95];
    for (const [k, row] of Object.entries(table)) {
      alphas.forEach((a, i) => {
        expect(Number(pipelineSpeedup(a, Number(k)).toFixed(2))).toBe(row[i]);
      });
    }
    expect(pipelineSpeedup(0, 4)).toBeCloseTo(1, 12); // worst case = AR
    expect(pipelineSpeedup(1, 4)).toBeCloseTo(4, 12); // best case = k times AR
  });

  it("EESD's formula gives the note's 0.81x at c = 0.25, gamma = 4, alpha = 0.3", () => {
    expect(Number(eesdSpeedup(0.3, 4, 0.25).toFixed(2))).toBe(0.81);
    expect(expectedBlockTokens(1, 4)).toBe(5);
    expect(dvSpeedup(0, 3, 0.5)).toBeCloseTo(1 / 2.5, 12);
  });

  it('an uneven plan is charged its deepest stage', () => {
    expect(planSpeedup(0.7, [0, 6, 12])).toBeCloseTo(pipelineSpeedup(0.7, 2), 12);
    expect(planSpeedup(0.7, [0, 3, 5])).toBeCloseTo((5 / 6) * pipelineSpeedup(0.7, 2), 12);
  });
});

const stats = (
  decoder: SpeculationStats['decoder'],
  tokens: number,
  proposed: number,
  accepted: number,
  extra: Partial<SpeculationStats> = {},
): SpeculationStats => ({
  decoder,
  tokens,
  draftTokensProposed: proposed,
  draftTokensAccepted: accepted,
  verifications: tokens - accepted,
  ...extra,
});

const rec = (
  label: string,
  repeat: number,
  tokens: number,
  decodeMs: number,
  s: SpeculationStats,
  alpha: number | null = null,
): RunRecord => ({
  label,
  alpha,
  prompt: 0,
  repeat,
  tokens,
  decodeMs,
  totalMs: decodeMs + 1,
  stats: s,
  matchesAr: label === 'ar-1core' ? undefined : true,
});

describe('benchmark arithmetic', () => {
  it('medians and pooled rates', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    // (11 - 1 + 21 - 1) tokens over 300 ms
    expect(
      pooledRate([
        { tokens: 11, decodeMs: 100 },
        { tokens: 21, decodeMs: 200 },
      ]),
    ).toBeCloseTo(100, 10);
  });

  it("speedup, ideal and efficiency from the decoders' counters", () => {
    const config = llamaConfig({ dim: 8, nLayers: 4, nHeads: 2, vocabSize: 16 });
    const records = [
      // AR 1 core: 100 tok/s in both repeats; AR all cores 125 tok/s
      rec('ar-1core', 0, 101, 1000, stats('ar', 101, 0, 0)),
      rec('ar-1core', 1, 101, 1000, stats('ar', 101, 0, 0)),
      rec('ar-all-cores', 0, 101, 800, stats('ar', 101, 0, 0)),
      rec('ar-all-cores', 1, 101, 800, stats('ar', 101, 0, 0)),
      // ppsd: 150 tok/s, 80 of 100 drafts accepted, in both repeats
      ...[0, 1].map((repeat) =>
        rec(
          'ppsd',
          repeat,
          151,
          1000,
          stats('ppsd', 151, 100, 80, {
            stages: [
              { busyMs: 600, idleMs: 400 },
              { busyMs: 500, idleMs: 500 },
            ],
          }),
        ),
      ),
    ];
    const s = summarize(records, { config, stages: 2, boundaries: [0, 2, 4], exitLayer: 2 });
    const ppsd = s.find((x) => x.label === 'ppsd')!;
    expect(ppsd.tokensPerSecond).toBeCloseTo(150, 10);
    expect(ppsd.acceptance).toBeCloseTo(0.8, 12);
    expect(ppsd.speedupVsAr1).toBeCloseTo(1.5, 10);
    expect(ppsd.speedupVsArAll).toBeCloseTo(1.2, 10);
    expect(ppsd.ideal).toBeCloseTo(2 / (0.8 + 0.2 * 2), 10);
    expect(ppsd.efficiency).toBeCloseTo(1.5 / (2 / 1.2), 10); // 0.9
    expect(ppsd.efficiency).toBeCloseTo(efficiency(1.5, pipelineSpeedup(0.8, 2)), 12);
    expect(ppsd.stages![0].busyFraction).toBeCloseTo(0.6, 12);
    // ticks = tokens + (k - 1) * verifications = 151 + 71 per run
    expect(ppsd.ticks).toBe(2 * (151 + 71));
    expect(ppsd.msPerTick! - ppsd.maxStageBusyPerTickMs!).toBeCloseTo(ppsd.overheadPerTickMs!, 12);
    expect(s.map((x) => x.label)).toEqual(['ar-1core', 'ar-all-cores', 'ppsd']);
    const md = markdownTable(s, { controlled: false });
    expect(md).toContain('| ppsd | 150.0 | 0.800 | 1.50x | 1.20x | 1.67 | 0.90 | - | 60% / 50% |');
    expect(ppsd.ceiling).toBeUndefined();

    // with a stage probe for the ppsd row: AR 10 ms/token; the floor tick 6 ms, refills 0.2 x 5.5 ms
    const probes = {
      ppsd: {
        context: 64,
        runs: 4,
        rounds: 1,
        aloneMs: [5.5, 5],
        togetherMs: [6, 5.8],
        lockstepMs: [6.2, 6],
      },
    };
    const probed = summarize(records, { config, stages: 2, boundaries: [0, 2, 4], exitLayer: 2, probes });
    const c = probed.find((x) => x.label === 'ppsd')!.ceiling!;
    expect(c.speedup).toBeCloseTo(10 / (6 + 0.2 * 5.5), 10);
    expect(c.efficiency).toBeCloseTo(c.speedup / pipelineSpeedup(0.8, 2), 10);
    expect(probed.find((x) => x.label === 'ar-1core')!.ceiling).toBeUndefined();
    expect(markdownTable(probed, { controlled: false })).toContain(
      `| 1.67 | 0.90 | ${c.efficiency.toFixed(2)} | 60% / 50% |`,
    );
  });

  it('medianRate takes the median over repeats', () => {
    const r = [0, 1, 2].map((i) => rec('ar-1core', i, 11, [100, 200, 50][i], stats('ar', 11, 0, 0)));
    expect(medianRate(r)).toBeCloseTo(100, 10);
  });

  it("DV's draft cost counts the sub-layers it keeps", () => {
    const c = llamaConfig({ dim: 8, nLayers: 4, nHeads: 2, vocabSize: 16, hiddenDim: 8 });
    // attention = 8*4*(2*2+2*2) = 256, mlp = 3*8*8 = 192 per layer
    expect(skipCostFraction(c, { attention: [1], mlp: [] })).toBeCloseTo(1 - 256 / (4 * 448), 12);
    expect(skipCostFraction(c, undefined)).toBe(1);
  });
});

/** A decoder that emits a fixed sequence, recording the order it was called in. */
function fakeDecoder(name: 'ar' | 'ppsd', out: number[], calls: string[], label: string): Decoder {
  return {
    name,
    async *decode(req: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void> {
      calls.push(`${label}${req.controlledAcceptance ? `@${req.controlledAcceptance.alpha}` : ''}`);
      for (const t of out.slice(0, req.maxTokens)) yield [t];
      return stats(name, Math.min(out.length, req.maxTokens), 0, 0);
    },
    async close() {},
  };
}

describe('benchmark harness', () => {
  it('interleaves AR baselines and decoders per prompt, passes controlled acceptance, checks outputs', async () => {
    const calls: string[] = [];
    const decoders = [
      { label: 'ar-1core', decoder: fakeDecoder('ar', [5, 6, 7, 8], calls, 'ar'), speculative: false },
      { label: 'ppsd', decoder: fakeDecoder('ppsd', [5, 6, 7, 8], calls, 'ppsd'), speculative: true },
      { label: 'spd', decoder: fakeDecoder('ppsd', [5, 6, 9, 9], calls, 'spd'), speculative: true },
    ];
    const records = await runHarness(decoders, {
      prompts: [Int32Array.of(1, 2), Int32Array.of(1, 3)],
      maxTokens: 4,
      repeats: 1,
      alphas: [0.5, 0.9],
      warmup: false,
    });
    // references first, then per prompt: AR, then each alpha's decoders (rotated per prompt)
    expect(calls).toEqual([
      'ar',
      'ar',
      'ar',
      'ppsd@0.5',
      'spd@0.5',
      'ppsd@0.9',
      'spd@0.9',
      'ar',
      'spd@0.5',
      'ppsd@0.5',
      'spd@0.9',
      'ppsd@0.9',
    ]);
    expect(records).toHaveLength(10);
    expect(records.filter((r) => r.label === 'spd').every((r) => r.matchesAr === false)).toBe(true);
    expect(records.filter((r) => r.label === 'ppsd').every((r) => r.matchesAr === true)).toBe(true);
  });
});

describe('benchmark docs', () => {
  it('replaces only the marked section', () => {
    const doc = `# Benchmarks\n\nintro\n\n${START}\nold\n${END}\n\n## Other section\nkept\n`;
    const out = replaceSection(doc, 'new table');
    expect(out).toBe(`# Benchmarks\n\nintro\n\n${START}\nnew table\n${END}\n\n## Other section\nkept\n`);
    expect(replaceSection('# B\n', 'x')).toBe(`# B\n\n${START}\nx\n${END}\n`);
  });

  it('draws an SVG chart with every series in the legend', () => {
    const svg = lineChartSvg(
      [
        {
          name: 'ideal k=2',
          color: '#00f',
          dashed: true,
          points: [0, 0.5, 1].map((a) => ({ x: a, y: pipelineSpeedup(a, 2) })),
        },
        { name: 'ppsd <measured>', color: '#f00', markers: true, points: [{ x: 0.8, y: 1.5 }] },
      ],
      { title: 'Speedup', xLabel: 'alpha', yLabel: 'speedup', xRange: [0, 1], yRange: [0, 2.2] },
    );
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('ideal k=2');
    expect(svg).toContain('ppsd &lt;measured&gt;');
    expect(svg).toContain('stroke-dasharray');
  });
});
