/**
 * The verify-while-draft pipeline shared by PPSD and SPD (design note, decoders 4 and 5).
 *
 * k stages, one worker_threads Worker each (a "device" is a CPU core here). The main thread is only the
 * controller. Each tick:
 *   1. it posts one `run` to every stage that holds an in-flight token: the token id to stage 1, the
 *      hidden state the token reached (transferred, never copied) to stages 2..k; a rejection's cache
 *      truncation rides on that same message;
 *   2. while the stages run concurrently, the drafter may work on the main thread (SPD);
 *   3. it awaits all replies and advances the pipeline: the token leaving stage k gets the model's real
 *      next token from the final logits, which judges (speculative-sampling rule) the draft that followed
 *      it, now leaving stage k-1. Accepted: every token moves one stage deeper and the drafter's next
 *      draft enters stage 1. Rejected: the replacement token is emitted, every newer in-flight token is
 *      flushed, every stage forgets positions past the rejected one, and the pipeline refills from the
 *      replacement token.
 * So each tick costs one stage forward plus one message round trip per stage, and emits at most one
 * token: an accepted draft costs 1 tick, a rejection about k (the refill): S = k / (alpha + (1-alpha) k).
 *
 * Prefill: the whole prompt goes through the stages as one block, stage after stage (not pipelined: a
 * single prompt gains little from chunking on a CPU pipeline, and the first token's latency stays one
 * full forward). The first token comes from the last stage's logits, as in AR: the same blocks, so the
 * same cache entries even where a quantized matmul's rounding depends on the block's row count (int8
 * activations, graph/weights.ts consistentRows). That token then enters stage 1 as the first in-flight
 * token, and drafting starts with it.
 */

import { performance } from 'node:perf_hooks';
import { headDim, type LlamaConfig, type LlamaModel } from '../model/llama';
import { isBlock } from '../model/matrix';
import type { StageSpec } from '../model/stage';
import { parseDevice } from '../runtime';
import {
  type DecodeRequest,
  type Decoder,
  type DecoderName,
  type PipelinePlan,
  SingleGeneration,
  type SpeculationStats,
  startStats,
} from './decoder';
import type { StageSplit, StageWorkersOptions } from './plan';
import type { Sampler } from './sampling';
import { type ControlledAcceptance, ControlledDrafts, type Draft, judge } from './spec-rule';
import type { OutReply } from './stage-protocol';
import { type RunRequest, WorkerStage } from './worker-stage';

/**
 * Layer boundaries of a k-stage plan: b[0] = 0 < b[1] = E < ... < b[k] = N. Stage j covers
 * [b[j], b[j+1]). The first stage ends at the exit layer E; the remaining N - E layers are split as
 * evenly as possible (the larger stages last). Equal layer counts: see `balancedBoundaries` for a split
 * that equalises the stages' cost including the heads.
 */
export function stageBoundaries(nLayers: number, k: number, exitLayer?: number): number[] {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`stages must be a positive integer, got ${k}`);
  if (k > nLayers) throw new RangeError(`${k} stages need at least ${k} layers; the model has ${nLayers}`);
  if (k === 1) return [0, nLayers];
  const E = exitLayer ?? Math.max(1, Math.round(nLayers / k));
  if (!Number.isInteger(E) || E < 1 || nLayers - E < k - 1) {
    throw new RangeError(
      `exit layer ${E} leaves too few layers for ${k - 1} more stages of a ${nLayers}-layer model`,
    );
  }
  const b = [0, E];
  const parts = k - 1;
  const base = Math.floor((nLayers - E) / parts);
  const extra = (nLayers - E) % parts;
  for (let j = 1; j <= parts; j++) b.push(b[j] + base + (j > parts - extra ? 1 : 0));
  return b;
}

export type { StageSplit } from './plan';

/** What the stages carry besides their layers, for the cost model. */
export interface StageCostOptions {
  /**
   * Rows the draft head at the end of stage 1 scores: the vocabulary (default), a frequency-ranked
   * subset, or 0 when stage 1 has no head (SPD drafts on the controller).
   */
  draftRows?: number;
  /** The draft head applies an affine map (dim x dim) before the final norm. */
  draftAffine?: boolean;
  /** A layer's cost per MAC relative to the classifier's (default LAYER_COST_FACTOR; see layerCostFactor). */
  layerFactor?: number;
}

/**
 * Multiply-adds per token of one transformer layer: the q/k/v/o projections and the SwiGLU MLP
 * (attention over the cached context, 2 x context x dim, is left out: < 3% at the contexts benchmarked).
 */
export function layerMacs(c: LlamaConfig): number {
  const kvDim = c.nKvHeads * headDim(c);
  return c.dim * (c.dim + 2 * kvDim) + c.dim * c.dim + 3 * c.dim * c.hiddenDim;
}

/**
 * A layer's cost per multiply-add relative to a classifier GEMV's. Measured with one ORT thread on the
 * 2-core dev box (Llama-2 110M shape, context ~60): 2.08 ms per layer (7.08M MACs) against 6.4 ms for the
 * 32000-row classifier (24.6M MACs), i.e. ~1.1x per MAC (norms, rotary, attention over the context and
 * many small kernels). The balanced split weighs layers by it.
 */
export const LAYER_COST_FACTOR = 1.1;

/**
 * The same ratio for blockwise (q8/q4) layers, higher because the matmuls shrink and the per-layer kernels
 * do not: measured on the 110M shape at q4 with one thread (ORT profile): ~1.06 ms per layer (7.08M MACs)
 * against ~2.4 ms for the 32000-row q4 classifier (24.6M MACs), i.e. ~1.5x per MAC.
 */
export const BLOCK_LAYER_COST_FACTOR = 2.5;

/** The cost options a model's storage implies (the layer factor of its layers' dtype). */
export function costOptionsFor(model: LlamaModel): Pick<StageCostOptions, 'layerFactor'> {
  const blockwise = isBlock(model.weights.layers[0].w1);
  return { layerFactor: blockwise ? BLOCK_LAYER_COST_FACTOR : LAYER_COST_FACTOR };
}

/** Modelled cost of one layer in classifier-MAC equivalents. */
export const layerCost = (c: LlamaConfig, o: StageCostOptions = {}): number =>
  (o.layerFactor ?? LAYER_COST_FACTOR) * layerMacs(c);

/** Modelled cost (MAC equivalents) per token of each stage of a plan: its layers, plus the draft head (stage 1) and the classifier (last). */
export function stageMacs(c: LlamaConfig, b: number[], o: StageCostOptions = {}): number[] {
  const L = layerCost(c, o);
  const k = b.length - 1;
  const draft = draftHeadMacs(c, o);
  return b.slice(1).map((end, j) => {
    let m = (end - b[j]) * L;
    if (j === 0 && k > 1) m += draft;
    if (j === k - 1) m += c.vocabSize * c.dim;
    return m;
  });
}

/** Modelled cost (MAC equivalents) of a full forward (AR on one device): all layers plus the classifier. */
export const forwardMacs = (c: LlamaConfig, o: StageCostOptions = {}): number =>
  c.nLayers * layerCost(c, o) + c.vocabSize * c.dim;

function draftHeadMacs(c: LlamaConfig, o: StageCostOptions): number {
  const rows = o.draftRows ?? c.vocabSize;
  if (rows === 0) return 0;
  return rows * c.dim + (o.draftAffine ? c.dim * c.dim : 0);
}

/**
 * Boundaries that minimise the costliest stage under `stageMacs` (so the tick, which is the slowest
 * stage, is as short as the layer granularity allows): stage 1 also carries the draft head, the last the
 * classifier. With `exitLayer` the first boundary is fixed and only the rest are balanced. Ties go to
 * the plan whose stages are closest to equal layer counts.
 */
export function balancedBoundaries(
  c: LlamaConfig,
  k: number,
  o: StageCostOptions & { exitLayer?: number } = {},
): number[] {
  const N = c.nLayers;
  const equal = stageBoundaries(N, k, o.exitLayer); // validates k and E
  if (k === 1) return equal;
  const L = layerCost(c, o);
  const head = draftHeadMacs(c, o);
  const cls = c.vocabSize * c.dim;
  const extra = (j: number) => (j === 0 ? head : 0) + (j === k - 1 ? cls : 0);
  // best[j][e]: the smallest possible max stage cost of stages 0..j covering layers [0, e)
  const best: number[][] = Array.from({ length: k }, () => new Array(N + 1).fill(Number.POSITIVE_INFINITY));
  const from: number[][] = Array.from({ length: k }, () => new Array(N + 1).fill(-1));
  for (let e = 1; e <= N - (k - 1); e++) {
    if (o.exitLayer !== undefined && e !== o.exitLayer) continue;
    best[0][e] = e * L + extra(0);
    from[0][e] = 0;
  }
  const eps = 1e-9 * forwardMacs(c, o);
  for (let j = 1; j < k; j++) {
    for (let e = j + 1; e <= N - (k - 1 - j); e++) {
      if (j === k - 1 && e !== N) continue;
      for (let a = j; a < e; a++) {
        if (!Number.isFinite(best[j - 1][a])) continue;
        const m = Math.max(best[j - 1][a], (e - a) * L + extra(j));
        const prev = from[j][e];
        // ties: prefer the boundary the equal split would pick
        const closer = prev >= 0 && Math.abs(a - equal[j]) < Math.abs(prev - equal[j]);
        if (m < best[j][e] - eps || (Math.abs(m - best[j][e]) <= eps && closer)) {
          best[j][e] = m;
          from[j][e] = a;
        }
      }
    }
  }
  const b = new Array<number>(k + 1);
  b[k] = N;
  for (let j = k - 1; j >= 0; j--) b[j] = from[j][b[j + 1]];
  return b;
}

/** The plan a pipeline runs: balanced (default) or equal layer counts, with the stage-1 exit at b[1]. */
export function planBoundaries(
  c: LlamaConfig,
  k: number,
  o: StageCostOptions & { exitLayer?: number; split?: StageSplit } = {},
): number[] {
  return (o.split ?? 'balanced') === 'equal'
    ? stageBoundaries(c.nLayers, k, o.exitLayer)
    : balancedBoundaries(c, k, o);
}

/**
 * Sub-layer balancing for k = 2: layer `s`'s attention runs at the end of stage 1 and its MLP at the
 * start of stage 2 (stage 1 = layers [0, s] with layer s's MLP skipped, stage 2 = [s, N) with layer s's
 * attention skipped; exact, since a layer is x + attn(x) followed by x' + mlp(x'), and the KV entries
 * of layer s are written by stage 1, the only one that attends with them). The exit (draft head) then
 * reads the hidden state after layer s's attention: fine for the logit lens, not for a stored head
 * fitted on whole layers, so callers use it only without one. Returns the split layer when it lowers
 * the costliest stage below the best whole-layer plan's, else undefined.
 */
export function sublayerSplit(c: LlamaConfig, k: number, o: StageCostOptions = {}): number | undefined {
  if (k !== 2) return undefined;
  const N = c.nLayers;
  const whole = Math.max(...stageMacs(c, balancedBoundaries(c, 2, o), o));
  const kvDim = c.nKvHeads * headDim(c);
  const attn = (o.layerFactor ?? LAYER_COST_FACTOR) * (c.dim * (c.dim + 2 * kvDim) + c.dim * c.dim);
  const mlp = layerCost(c, o) - attn;
  const L = layerCost(c, o);
  const head = draftHeadMacs(c, o);
  const cls = c.vocabSize * c.dim;
  let best: number | undefined;
  let bestCost = whole * (1 - 1e-9);
  for (let sl = 1; sl < N - 1; sl++) {
    const cost = Math.max(sl * L + attn + head, (N - sl - 1) * L + mlp + cls);
    if (cost < bestCost) {
      best = sl;
      bestCost = cost;
    }
  }
  return best;
}

/** Modelled cost per stage of a k = 2 plan split inside layer `sl` (see sublayerSplit). */
export function sublayerStageMacs(c: LlamaConfig, sl: number, o: StageCostOptions = {}): number[] {
  const kvDim = c.nKvHeads * headDim(c);
  const attn = (o.layerFactor ?? LAYER_COST_FACTOR) * (c.dim * (c.dim + 2 * kvDim) + c.dim * c.dim);
  const L = layerCost(c, o);
  return [sl * L + attn + draftHeadMacs(c, o), (c.nLayers - sl - 1) * L + (L - attn) + c.vocabSize * c.dim];
}

/** Stage specs of a k = 2 plan split inside layer `sl`. */
export const sublayerSpecs = (nLayers: number, sl: number): StageSpec[] => [
  { firstLayer: 0, endLayer: sl + 1, skip: { attention: [], mlp: [sl] } },
  { firstLayer: sl, endLayer: nLayers, skip: { attention: [sl], mlp: [] } },
];

/** Stage specs of a plan (no exit heads). */
export const specsOf = (b: number[]): StageSpec[] =>
  b.slice(1).map((end, j) => ({ firstLayer: b[j], endLayer: end }));

/** An in-flight token: where it is in the sequence and, while unverified, the draft it came from. */
export interface InFlight {
  pos: number;
  token: number;
  /** Present while the token is an unverified draft (carries q for the sampling rule). */
  draft?: Draft;
  /** Input of the stage it runs at next (the hidden state it reached); absent at stage 1. */
  hidden?: Float32Array;
}

/** What one tick's advance reads and updates besides the slots (PipelineDecoder.run's state). */
interface TickContext {
  sampler: Sampler;
  stats: SpeculationStats;
  /** Per stage, the position its next run truncates its cache to (set on a rejection). */
  truncateAt: (number | undefined)[];
  /** The last position ever fed. */
  lastFed: number;
  drafter: PipelineDrafter;
  controlled?: ControlledDrafts;
  draftWhen?: () => boolean;
}

/**
 * Advances the pipeline after a tick: the token leaving the last stage judges the draft behind it
 * (accepted: everything moves one stage deeper; rejected: the replacement is emitted, newer tokens are
 * flushed and every stage truncates past it), and the next draft (or the restart token) enters stage 1.
 * Returns the next tick's slots and the token emitted by this one, if any.
 */
function advance(
  slots: (InFlight | null)[],
  outs: (OutReply | null)[],
  t: TickContext,
): { next: (InFlight | null)[]; emitted?: number } {
  const k = slots.length;
  const next: (InFlight | null)[] = new Array(k).fill(null);
  let emitted: number | undefined;
  let restart: InFlight | undefined; // a verified token that (re)starts the pipeline at stage 1
  const leaving = slots[k - 1];
  const follower = slots[k - 2];
  if (leaving) {
    const logits = outs[k - 1]!.logits!;
    if (follower?.draft) {
      const verdict = judge(t.sampler, logits, follower.draft);
      t.stats.draftTokensProposed++;
      emitted = verdict.token;
      if (verdict.accepted) {
        t.stats.draftTokensAccepted++;
        follower.draft = undefined;
      } else {
        // Flush: every token newer than `leaving` is wrong; forget their cache entries everywhere.
        t.stats.verifications++;
        for (let s = 0; s < k - 2; s++) if (slots[s]) t.stats.draftTokensDiscarded! += 1;
        for (let s = 0; s < k - 1; s++) t.truncateAt[s] = leaving.pos + 1;
        slots = new Array(k).fill(null);
        restart = { pos: leaving.pos + 1, token: verdict.token };
      }
    } else {
      // Nothing was drafted behind it (the position cap): the model's own token.
      emitted = t.sampler.pick(logits);
      t.stats.verifications++;
      if (!follower) restart = { pos: leaving.pos + 1, token: emitted };
    }
  }
  for (let s = k - 1; s >= 1; s--) {
    const e = slots[s - 1];
    if (e) {
      e.hidden = outs[s - 1]!.hidden;
      next[s] = e;
    }
  }
  const newest = slots[0];
  if (newest && newest.pos + 1 <= t.lastFed && (t.draftWhen?.() ?? true)) {
    let draft = t.drafter.draft(outs[0]!, t.sampler);
    if (t.controlled) draft = t.controlled.apply(newest.pos + 1, draft);
    next[0] = { pos: newest.pos + 1, token: draft.token, draft };
  }
  if (restart && restart.pos <= t.lastFed) next[0] = restart;
  return { next, emitted };
}

/** How the next token entering stage 1 is drafted: PPSD's exit head, or SPD's feature drafter. */
export interface PipelineDrafter {
  /** Start of a generation: forget cached features. */
  reset(): void;
  /**
   * Sees each stage's output for the token at `pos` before its buffers move on (SPD keeps features).
   * Runs for prefill blocks too (`pos` is then the block's first position).
   */
  observe?(stage: number, pos: number, out: OutReply): void;
  /**
   * Called right after the tick's runs were posted, with the token entering stage 1 (tick start
   * state); work done here overlaps the stages' runs. The returned promise is awaited with them.
   */
  beginTick?(newest: InFlight): Promise<void> | undefined;
  /** The draft for the position after the token that just ran in stage 1. */
  draft(stage1Out: OutReply, sampler: Sampler): Draft;
  close?(): Promise<void>;
}

export interface PipelineOptions {
  name: Extract<DecoderName, 'ppsd' | 'spd'>;
  config: LlamaConfig;
  controlledAcceptance?: ControlledAcceptance;
  /** The plan the stages were built for (reported in the stats). */
  plan?: PipelinePlan;
  /**
   * Asked each tick before a draft enters stage 1 (default: always draft). When it says no, the token
   * leaving the last stage is the model's own and (re)enters stage 1 alone: plain pipelined AR for this
   * sequence, which leaves its idle stages to other sequences (schedule/pipeline-server.ts). Either way
   * the output is the same.
   */
  draftWhen?: () => boolean;
}

/**
 * What the pipeline runs a stage through: a stage Worker of its own (WorkerStage), or one sequence's
 * place in a batched stage thread shared with other sequences (schedule/pipeline-server.ts).
 */
export interface PipelineStage {
  run(req: RunRequest): Promise<OutReply>;
  close(): Promise<void>;
}

export class PipelineDecoder<S extends PipelineStage = WorkerStage> implements Decoder {
  readonly name: 'ppsd' | 'spd';
  private closing?: Promise<void>;
  private readonly single = new SingleGeneration();

  constructor(
    private readonly stages: S[],
    private readonly drafter: PipelineDrafter,
    private readonly opts: PipelineOptions,
  ) {
    if (stages.length < 2) throw new RangeError('a pipeline decoder needs at least 2 stages');
    this.name = opts.name;
  }

  /**
   * The stage Workers, for measuring them between generations (`ppsd bench`'s stage probe). Never touch
   * them while a generation runs: their caches belong to it.
   */
  get stageWorkers(): readonly S[] {
    return this.stages;
  }

  /**
   * Prefill: the whole prompt as one block, stage after stage (every cache starts from 0). Returns the
   * last stage's logits (the first token's, exactly as AR's prefill), or undefined if closed meanwhile.
   */
  private async prefill(prompt: Int32Array, busy: Float64Array): Promise<Float32Array | undefined> {
    let hidden: Float32Array | undefined;
    let logits: Float32Array | undefined;
    for (let s = 0; s < this.stages.length; s++) {
      if (this.closing) return undefined;
      const out = await this.stages[s].run({
        truncate: 0,
        position: 0,
        tokens: s === 0 ? prompt.slice() : undefined,
        hidden,
        logitRows: 1,
      });
      busy[s] += out.busyMs;
      this.drafter.observe?.(s, 0, out);
      hidden = out.hidden;
      logits = out.logits;
    }
    return logits;
  }

  decode(request: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void> {
    return this.single.run(
      this.name,
      () => !!this.closing,
      () => this.run(request),
    );
  }

  private async *run(request: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void> {
    const { prompt, maxTokens, sampler, signal } = request;
    const { stages, drafter } = this;
    const k = stages.length;
    const P = prompt.length;
    if (P < 1) throw new Error('the prompt must hold at least one token (BOS)');
    const stats = startStats(request, this.name);
    const busy = new Float64Array(k);
    const started = performance.now();
    const tick = { ticks: 0, tickMs: 0, computeMs: 0, plan: this.opts.plan };
    const finish = () => {
      const wall = performance.now() - started;
      stats.stages = Array.from(busy, (b) => ({ busyMs: b, idleMs: Math.max(0, wall - b) }));
      stats.pipeline = tick;
      return stats;
    };
    if (maxTokens <= 0) return finish();
    try {
      /** The last position ever fed: the final token is emitted but never needs a forward. */
      const lastFed = P + maxTokens - 2;
      const controlledSetting = request.controlledAcceptance ?? this.opts.controlledAcceptance;
      const controlled = controlledSetting
        ? new ControlledDrafts(controlledSetting, P, this.opts.config.vocabSize)
        : undefined;
      drafter.reset();

      const truncateAt: (number | undefined)[] = new Array(k).fill(undefined);
      const logits = await this.prefill(prompt, busy);
      if (!logits) return finish();
      const firstToken = sampler.pick(logits);
      stats.verifications++;

      // ---- the pipeline: slots[s] is the token stage s runs this tick.
      let slots: (InFlight | null)[] = new Array(k).fill(null);
      if (P <= lastFed) slots[0] = { pos: P, token: firstToken };
      const runs: (Promise<OutReply> | null)[] = new Array(k).fill(null);
      let drafting: Promise<void> | undefined;
      // Posts every stage's run for `slots` before any other main-thread work (the deepest stage first:
      // it carries the classifier, so the costliest run starts earliest); then SPD's drafter works
      // while the stages run.
      const post = () => {
        for (let s = k - 1; s >= 0; s--) {
          const e = slots[s];
          if (!e) {
            runs[s] = null;
            continue;
          }
          runs[s] = stages[s].run({
            truncate: truncateAt[s],
            position: e.pos,
            tokens: s === 0 ? Int32Array.of(e.token) : undefined,
            hidden: e.hidden,
            logitRows: 1,
          });
          truncateAt[s] = undefined;
          e.hidden = undefined; // transferred to the Worker
        }
        drafting = slots[0] ? drafter.beginTick?.(slots[0]) : undefined;
      };
      const ticking: TickContext = {
        sampler,
        stats,
        truncateAt,
        lastFed,
        drafter,
        controlled,
        draftWhen: this.opts.draftWhen,
      };
      const loopStart = performance.now();
      stats.tokens++;
      let posted = false;
      if (stats.tokens < maxTokens && !signal?.aborted && !this.closing) {
        post(); // the stages work on the next token while the consumer takes the first
        posted = true;
        for (const r of runs) r?.catch(() => {});
        (drafting as Promise<void> | undefined)?.catch(() => {});
      }
      yield [firstToken];
      while (stats.tokens < maxTokens && !signal?.aborted && !this.closing) {
        if (!posted) post();
        posted = false;
        const outs = await Promise.all(runs);
        if (drafting) await drafting;
        drafting = undefined;
        let slowest = 0;
        for (let s = 0; s < k; s++) {
          const out = outs[s];
          if (!out) continue;
          busy[s] += out.busyMs;
          if (out.busyMs > slowest) slowest = out.busyMs;
          drafter.observe?.(s, slots[s]!.pos, out);
        }
        tick.ticks++;
        tick.computeMs += slowest;

        const { next, emitted } = advance(slots, outs, ticking);
        slots = next;
        tick.tickMs = performance.now() - loopStart;
        if (emitted !== undefined) {
          stats.tokens++;
          // The next tick's runs go out before the token is handed to the consumer, so the stages
          // compute while it works. If the consumer stops here, the Workers finish these runs unobserved
          // (their caches are reset by the next generation's first run).
          if (stats.tokens < maxTokens && !signal?.aborted && !this.closing) {
            post();
            posted = true;
            for (const r of runs) r?.catch(() => {});
            (drafting as Promise<void> | undefined)?.catch(() => {});
          }
          yield [emitted];
        }
      }
    } finally {
      finish(); // also when the consumer stops early: stage times are part of the stats
    }
    return finish();
  }

  /** Lets every Worker finish its current run, then shuts them down (they exit by themselves). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.all(this.stages.map((s) => s.close()));
      await this.drafter.close?.();
    })();
    return this.closing;
  }
}

/** Starts one Worker per stage spec, their sessions created concurrently inside the Workers. */
export async function startStageWorkers(
  model: LlamaModel,
  specs: StageSpec[],
  opts: StageWorkersOptions = {},
): Promise<WorkerStage[]> {
  const started = await Promise.allSettled(
    specs.map((spec, j) =>
      WorkerStage.start(model, spec, {
        device: parseDevice(opts.devices?.[j] ?? 'cpu'),
        threads: opts.threadsPerStage ?? 1,
        maxSeqLen: opts.maxSeqLen,
        accuracyLevel: opts.accuracyLevel,
        allowCpuFallback: opts.allowCpuFallback ?? !!opts.log,
      }),
    ),
  );
  const failed = started.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.all(started.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
    throw (failed as PromiseRejectedResult).reason;
  }
  const stages = started.map((r) => (r as PromiseFulfilledResult<WorkerStage>).value);
  stages.forEach((st, j) => {
    const wanted = parseDevice(opts.devices?.[j] ?? 'cpu');
    if (st.device !== wanted) opts.log?.(`stage ${j + 1}: ${wanted} unavailable, running on ${st.device}`);
  });
  return stages;
}
