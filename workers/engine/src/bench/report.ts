/**
 * Benchmark arithmetic and reporting: medians, acceptance, speedups over both AR baselines, ideal
 * speedups at the measured acceptance, efficiency, and where a pipeline's time goes.
 */
import type { PipelinePlan } from '../decode/decoder';
import { forwardMacs } from '../decode/pipeline';
import type { LlamaConfig, SkipSet } from '../model/llama';
import type { RunRecord } from './harness';
import { costPlanSpeedup, dvSpeedup, eesdSpeedup, efficiency, pipelineSpeedup, planSpeedup } from './ideal';
import { type ProbeCeiling, probeCeiling, type StageProbe } from './stage-probe';
import { median } from './stats';

export interface BenchSetup {
  config: LlamaConfig;
  /** Pipeline stages k and the plan's layer boundaries (PPSD, SPD). */
  stages: number;
  boundaries: number[];
  /** EESD's exit layer (its draft runs layers [0, E)). */
  exitLayer: number;
  skipSet?: SkipSet;
  /** Pipelines' stage probes by row label (stage-probe.ts): the machine's ceiling for each row. */
  probes?: Record<string, StageProbe>;
}

export interface StageSummary {
  busyMs: number; // summed over the measured runs
  idleMs: number;
  busyFraction: number;
}

export interface Summary {
  label: string;
  alpha: number | null;
  runs: number;
  tokens: number;
  /** Median over repeats of (decoded tokens after the first) / (decode time), all prompts of a repeat pooled. */
  tokensPerSecond: number;
  acceptance: number | null;
  draftsPerBlock: number | null;
  speedupVsAr1: number;
  speedupVsArAll: number;
  ideal: number | null;
  idealFormula: string | null;
  /** Uneven pipeline plans: the ideal with the deepest stage as the tick. */
  idealPlan: number | null;
  efficiency: number | null;
  lossless: boolean;
  stages?: StageSummary[];
  /** Pipelines: estimated ticks, time per tick, stage compute per tick, and the rest (messaging, control, drafting). */
  ticks?: number;
  msPerTick?: number;
  maxStageBusyPerTickMs?: number;
  overheadPerTickMs?: number;
  /** Each stage's busy time per tick (decode loop). */
  stageBusyPerTickMs?: number[];
  /** The pipeline's plan (boundaries, split, draft-head rows, modelled MACs per stage). */
  plan?: PipelinePlan;
  /** Pipelines: the best this machine allows at the measured acceptance (from the stage probe). */
  ceiling?: ProbeCeiling;
}

/** Decoding rate of a group of runs: tokens after the first per second of decode time. */
export function pooledRate(runs: Pick<RunRecord, 'tokens' | 'decodeMs'>[]): number {
  let toks = 0;
  let ms = 0;
  for (const r of runs) {
    toks += Math.max(r.tokens - 1, 0);
    ms += r.decodeMs;
  }
  return ms > 0 ? (1000 * toks) / ms : 0;
}

/** Median over repeats of the pooled rate of each repeat. */
export function medianRate(runs: RunRecord[]): number {
  const byRepeat = new Map<number, RunRecord[]>();
  for (const r of runs) byRepeat.set(r.repeat, [...(byRepeat.get(r.repeat) ?? []), r]);
  return median([...byRepeat.values()].map(pooledRate));
}

/** Relative cost of a layer-skipping draft: the share of the layers' multiply-adds it still runs. */
export function skipCostFraction(c: LlamaConfig, skip: SkipSet | undefined): number {
  const hd = c.dim / c.nHeads;
  const attn = c.dim * hd * (2 * c.nHeads + 2 * c.nKvHeads);
  const mlp = 3 * c.dim * c.hiddenDim;
  const total = c.nLayers * (attn + mlp);
  const skipped = (skip?.attention.length ?? 0) * attn + (skip?.mlp.length ?? 0) * mlp;
  return (total - skipped) / total;
}

export function summarize(records: RunRecord[], setup: BenchSetup): Summary[] {
  const groups = new Map<string, RunRecord[]>();
  for (const r of records) {
    const key = `${r.label}|${r.alpha ?? ''}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const ar1 = records.filter((r) => r.label === 'ar-1core');
  const arAll = records.filter((r) => r.label === 'ar-all-cores');
  const ar1Rate = medianRate(ar1);
  const arAllRate = arAll.length > 0 ? medianRate(arAll) : Number.NaN;
  const { config, stages: k, boundaries } = setup;
  const N = config.nLayers;
  const out: Summary[] = [];
  for (const runs of groups.values()) {
    const { label, alpha } = runs[0];
    const rate = medianRate(runs);
    let proposed = 0;
    let accepted = 0;
    let discarded = 0;
    let verifications = 0;
    let tokens = 0;
    for (const r of runs) {
      proposed += r.stats.draftTokensProposed;
      accepted += r.stats.draftTokensAccepted;
      discarded += r.stats.draftTokensDiscarded ?? 0;
      verifications += r.stats.verifications;
      tokens += r.stats.tokens;
    }
    const speculative = label !== 'ar-1core' && label !== 'ar-all-cores' && label !== 'ar';
    const acc = speculative && proposed > 0 ? accepted / proposed : null;
    // Block decoders: drafts made per block (judged + discarded), over verify steps after the prefill's.
    const blocks = Math.max(verifications - runs.length, 1);
    const draftsPerBlock = label === 'eesd' || label === 'dv' ? (proposed + discarded) / blocks : null;
    let ideal: number | null = null;
    let idealPlan: number | null = null;
    let formula: string | null = null;
    if (acc !== null) {
      if (label === 'ppsd' || label === 'spd') {
        ideal = pipelineSpeedup(acc, k);
        idealPlan = planSpeedup(acc, boundaries);
        formula = `k/(a+(1-a)k), k=${k}`;
      } else if (label === 'eesd' && draftsPerBlock !== null) {
        ideal = eesdSpeedup(acc, draftsPerBlock, setup.exitLayer / N);
        formula = `EESD, gamma=${draftsPerBlock.toFixed(2)}, c=E/N=${(setup.exitLayer / N).toFixed(2)}`;
      } else if (label === 'dv' && draftsPerBlock !== null) {
        const c = skipCostFraction(config, setup.skipSet);
        ideal = dvSpeedup(acc, draftsPerBlock, c);
        formula = `DV, gamma=${draftsPerBlock.toFixed(2)}, c=${c.toFixed(2)}`;
      }
    }
    const s: Summary = {
      label,
      alpha,
      runs: runs.length,
      tokens,
      tokensPerSecond: rate,
      acceptance: acc,
      draftsPerBlock,
      speedupVsAr1: rate / ar1Rate,
      speedupVsArAll: rate / arAllRate,
      ideal,
      idealFormula: formula,
      idealPlan,
      efficiency: ideal === null ? null : efficiency(rate / ar1Rate, ideal),
      lossless: runs.every((r) => r.matchesAr !== false),
    };
    const probe = setup.probes?.[label];
    if (probe && acc !== null) s.ceiling = probeCeiling(probe, 1000 / ar1Rate, acc);
    const withStages = runs.filter((r) => r.stats.stages && r.stats.stages.length > 0);
    if (withStages.length > 0) {
      const n = withStages[0].stats.stages!.length;
      const busy = new Array(n).fill(0);
      const idle = new Array(n).fill(0);
      let ticks = 0;
      let wall = 0;
      for (const r of withStages) {
        r.stats.stages!.forEach((st, j) => {
          busy[j] += st.busyMs;
          idle[j] += st.idleMs;
        });
        // an accepted token costs one tick, each rejection (or undrafted step) the k-1 extra refill ticks
        ticks += r.stats.tokens + (n - 1) * r.stats.verifications;
        wall += r.totalMs;
      }
      s.stages = busy.map((b, j) => ({ busyMs: b, idleMs: idle[j], busyFraction: b / (b + idle[j]) }));
      s.ticks = ticks;
      s.msPerTick = wall / ticks;
      s.maxStageBusyPerTickMs = Math.max(...busy) / ticks;
      s.overheadPerTickMs = s.msPerTick - s.maxStageBusyPerTickMs;
      // Measured by the pipeline itself (decode loop only, prefill excluded): ticks, their wall time and
      // per tick the slowest stage's run, so "rest" is what is left on the critical path.
      const measured = withStages.filter((r) => r.stats.pipeline && r.stats.pipeline.ticks > 0);
      if (measured.length === withStages.length) {
        let n2 = 0;
        let tickMs = 0;
        let computeMs = 0;
        for (const r of measured) {
          n2 += r.stats.pipeline!.ticks;
          tickMs += r.stats.pipeline!.tickMs;
          computeMs += r.stats.pipeline!.computeMs;
        }
        s.ticks = n2;
        s.msPerTick = tickMs / n2;
        s.maxStageBusyPerTickMs = computeMs / n2;
        s.overheadPerTickMs = s.msPerTick - s.maxStageBusyPerTickMs;
        s.stageBusyPerTickMs = busy.map((b) => b / n2);
      }
      const plan = withStages[0].stats.pipeline?.plan;
      if (plan) {
        s.plan = plan;
        if (acc !== null)
          s.idealPlan = costPlanSpeedup(acc, plan.stageMacs, plan.forwardMacs ?? forwardMacs(config));
      }
    }
    out.push(s);
  }
  const order = ['ar-1core', 'ar-all-cores', 'eesd', 'dv', 'ppsd', 'spd'];
  out.sort((a, b) => (a.alpha ?? -1) - (b.alpha ?? -1) || order.indexOf(a.label) - order.indexOf(b.label));
  return out;
}

const f = (x: number | null | undefined, d = 2) =>
  x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d);

/**
 * The results as a markdown table. "ceiling": the efficiency the machine allows a pipeline at that
 * acceptance (stage probe: its stages' runs together, no messaging), where one was probed.
 */
export function markdownTable(summaries: Summary[], opts: { controlled: boolean }): string {
  const lines = [
    `| decoder | ${opts.controlled ? 'alpha (controlled) | ' : ''}tokens/s | acceptance | speedup vs AR 1 core | vs AR all cores | ideal S | efficiency | ceiling | stage busy (per stage) | ms/tick: stage compute + rest |`,
    `|---|${opts.controlled ? '---|' : ''}---|---|---|---|---|---|---|---|---|`,
  ];
  for (const s of summaries) {
    const stages = s.stages
      ? s.stages.map((st) => `${(100 * st.busyFraction).toFixed(0)}%`).join(' / ')
      : '-';
    const tick =
      s.msPerTick !== undefined
        ? `${f(s.msPerTick)} = ${f(s.maxStageBusyPerTickMs)} + ${f(s.overheadPerTickMs)}`
        : '-';
    lines.push(
      `| ${s.label}${s.lossless ? '' : ' (NOT LOSSLESS)'} | ${opts.controlled ? `${s.alpha ?? '-'} | ` : ''}${f(s.tokensPerSecond, 1)} | ${f(s.acceptance, 3)} | ${f(s.speedupVsAr1)}x | ${f(s.speedupVsArAll)}x | ${f(s.ideal)}${s.idealPlan !== null && s.ideal !== null && Math.abs(s.idealPlan - s.ideal) > 0.005 ? ` (plan ${f(s.idealPlan)})` : ''} | ${f(s.efficiency)} | ${f(s.ceiling?.efficiency)} | ${stages} | ${tick} |`,
    );
  }
  return lines.join('\n');
}
