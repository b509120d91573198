/**
 * The floor a machine puts under a pipeline's tick, measured with the pipeline's own stage Workers:
 * each stage's run alone, then all stages running at once, each looping on its own (no controller, no
 * tick barrier, nothing but the stages' compute). On a CPU every stage streams its layers' weights from
 * memory for each token; k cores streaming together share the memory bandwidth, so a stage runs slower
 * together than alone. No controller can make a tick shorter than the slowest stage's together-run, and
 * a refill tick after a rejection is at least stage 1 running alone; `probeCeiling` turns that into the
 * best speedup and efficiency this machine allows, before any messaging or control.
 */

import type { OutReply } from '../decode/stage-protocol';
import type { RunRequest } from '../decode/worker-stage';
import { pipelineSpeedup } from './ideal';
import { median } from './stats';

/** What the probe needs of a stage: WorkerStage's run and truncate. */
export interface ProbedStage {
  run(req: RunRequest): Promise<OutReply>;
  truncate(length: number): void;
}

export interface StageProbe {
  /** Cached positions each measured run attends over. */
  context: number;
  /** Runs per stage per measurement, and interleaved alone/together rounds. */
  runs: number;
  rounds: number;
  /**
   * Median compute per run (inside the Worker) of each stage: alone; with all stages looping on their
   * own at once (the hardware's floor); and in lockstep, every stage starting together and the next
   * round waiting for the slowest (a tick-synchronous controller with no messaging cost).
   */
  aloneMs: number[];
  togetherMs: number[];
  lockstepMs: number[];
}

export interface ProbeOptions {
  /** Model width (stages after the first take hidden states of this size). */
  dim: number;
  context?: number;
  runs?: number;
  rounds?: number;
}

/**
 * Measures `stages` (a pipeline's Workers, idle: call it between generations), `rounds` times each way,
 * interleaved. Leaves every cache empty (the next generation's prefill starts from position 0 anyway).
 */
export async function probeStages(stages: readonly ProbedStage[], o: ProbeOptions): Promise<StageProbe> {
  const context = o.context ?? 64;
  const runs = o.runs ?? 12;
  const rounds = o.rounds ?? 3;
  const k = stages.length;
  // Deterministic inputs: token ids for stage 1, a small constant hidden state for the others (the
  // values do not change the cost of a dense forward).
  const input = (s: number, rows: number): Pick<RunRequest, 'tokens' | 'hidden'> =>
    s === 0
      ? { tokens: Int32Array.from({ length: rows }, (_, i) => 3 + (i % 50)) }
      : { hidden: new Float32Array(rows * o.dim).fill(0.01) };
  await Promise.all(
    stages.map((st, s) => st.run({ truncate: 0, position: 0, logitRows: 1, ...input(s, context) })),
  );
  const once = async (s: number) =>
    (await stages[s].run({ truncate: context, position: context, logitRows: 1, ...input(s, 1) })).busyMs;
  const loop = async (s: number, into: number[]) => {
    for (let i = 0; i < runs; i++) into.push(await once(s));
  };
  const alone: number[][] = stages.map(() => []);
  const together: number[][] = stages.map(() => []);
  const lockstep: number[][] = stages.map(() => []);
  try {
    for (let r = 0; r < rounds; r++) {
      for (let s = 0; s < k; s++) await loop(s, alone[s]);
      await Promise.all(stages.map((_, s) => loop(s, together[s])));
      for (let i = 0; i < runs; i++) {
        const busy = await Promise.all(stages.map((_, s) => once(s)));
        for (let s = 0; s < k; s++) lockstep[s].push(busy[s]);
      }
    }
  } finally {
    for (const st of stages) st.truncate(0);
  }
  return {
    context,
    runs,
    rounds,
    aloneMs: alone.map(median),
    togetherMs: together.map(median),
    lockstepMs: lockstep.map(median),
  };
}

/** Two probes of the same stages (e.g. before and after a benchmark) as one: runs pooled, medians averaged. */
export function poolProbes(a: StageProbe, b: StageProbe): StageProbe {
  const mean = (x: number[], y: number[]) => x.map((v, i) => (v + y[i]) / 2);
  return {
    context: a.context,
    runs: a.runs,
    rounds: a.rounds + b.rounds,
    aloneMs: mean(a.aloneMs, b.aloneMs),
    togetherMs: mean(a.togetherMs, b.togetherMs),
    lockstepMs: mean(a.lockstepMs, b.lockstepMs),
  };
}

export interface ProbeCeiling {
  /** The probe it was computed from (so a report needs only the summary). */
  probe: StageProbe;
  /** The shortest possible tick with every stage busy: the slowest stage's together-run. */
  floorTickMs: number;
  /** Each stage's slowdown from running together: together / alone. */
  slowdown: number[];
  /** At acceptance alpha: the best speedup over AR on one core, and that over the ideal speedup. */
  speedup: number;
  efficiency: number;
}

/**
 * The machine's ceiling at acceptance `alpha`: per emitted token one tick with every stage busy
 * (>= the floor tick) plus, per rejection, k - 1 refill ticks of at least stage 1's run alone; against
 * AR's `arMsPerToken` on one core.
 */
export function probeCeiling(p: StageProbe, arMsPerToken: number, alpha: number): ProbeCeiling {
  const k = p.aloneMs.length;
  const floorTickMs = Math.max(...p.togetherMs);
  const perToken = floorTickMs + (1 - alpha) * (k - 1) * p.aloneMs[0];
  const speedup = arMsPerToken / perToken;
  return {
    probe: p,
    floorTickMs,
    slowdown: p.togetherMs.map((t, s) => t / p.aloneMs[s]),
    speedup,
    efficiency: speedup / pipelineSpeedup(alpha, k),
  };
}
