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
 * Prefill: the prompt minus its last token goes through the stages as one block, stage after stage
 * (not pipelined: a single prompt gains little from chunking on a CPU pipeline and it keeps the first
 * token's latency at one full forward). The last prompt token then enters stage 1 as the first in-flight
 * token, so drafting starts at once.
 */
import { performance } from 'node:perf_hooks';
import type { LlamaConfig, LlamaModel } from '../model/llama';
import type { StageSpec } from '../model/stage';
import { parseDevice } from '../runtime';
import {
  type DecodeRequest,
  type Decoder,
  type DecoderName,
  type SpeculationStats,
  startStats,
} from './decoder';
import type { Sampler } from './sampling';
import { type ControlledAcceptance, ControlledDrafts, type Draft, judge } from './spec-rule';
import type { OutReply } from './stage-protocol';
import { WorkerStage } from './worker-stage';

/**
 * Layer boundaries of a k-stage plan: b[0] = 0 < b[1] = E < ... < b[k] = N. Stage j covers
 * [b[j], b[j+1]). The first stage ends at the exit layer E; the remaining N - E layers are split as
 * evenly as possible (the larger stages last).
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
}

export class PipelineDecoder implements Decoder {
  readonly name: 'ppsd' | 'spd';
  private closing?: Promise<void>;
  private active = false;

  constructor(
    private readonly stages: WorkerStage[],
    private readonly drafter: PipelineDrafter,
    private readonly opts: PipelineOptions,
  ) {
    if (stages.length < 2) throw new RangeError('a pipeline decoder needs at least 2 stages');
    this.name = opts.name;
  }

  async *decode(request: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void> {
    if (this.closing) throw new Error(`${this.name} decoder is closed`);
    if (this.active) throw new Error(`${this.name} decoder serves one generation at a time`);
    this.active = true;
    try {
      return yield* this.run(request);
    } finally {
      this.active = false;
    }
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
    const finish = () => {
      const wall = performance.now() - started;
      stats.stages = Array.from(busy, (b) => ({ busyMs: b, idleMs: Math.max(0, wall - b) }));
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

      // ---- prefill: prompt[0, P-1) as one block, stage after stage; every cache starts from 0.
      const truncateAt: (number | undefined)[] = new Array(k).fill(0);
      if (P > 1) {
        let hidden: Float32Array | undefined;
        for (let s = 0; s < k; s++) {
          if (this.closing) return finish();
          const out = await stages[s].run({
            truncate: 0,
            position: 0,
            tokens: s === 0 ? prompt.subarray(0, P - 1).slice() : undefined,
            hidden,
            logitRows: 1,
          });
          busy[s] += out.busyMs;
          drafter.observe?.(s, 0, out);
          hidden = out.hidden;
          truncateAt[s] = undefined;
        }
      }

      // ---- the pipeline: slots[s] is the token stage s runs this tick.
      let slots: (InFlight | null)[] = new Array(k).fill(null);
      slots[0] = { pos: P - 1, token: prompt[P - 1] };
      const runs: (Promise<OutReply> | null)[] = new Array(k).fill(null);
      while (stats.tokens < maxTokens && !signal?.aborted && !this.closing) {
        for (let s = 0; s < k; s++) {
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
        const drafting = slots[0] ? drafter.beginTick?.(slots[0]) : undefined;
        const [outs] = await Promise.all([Promise.all(runs), drafting]);
        for (let s = 0; s < k; s++) {
          const out = outs[s];
          if (!out) continue;
          busy[s] += out.busyMs;
          drafter.observe?.(s, slots[s]!.pos, out);
        }

        const next: (InFlight | null)[] = new Array(k).fill(null);
        let emitted: number | undefined;
        let restart: InFlight | undefined; // a verified token that (re)starts the pipeline at stage 1
        const leaving = slots[k - 1];
        const follower = slots[k - 2];
        if (leaving) {
          const logits = outs[k - 1]!.logits!;
          if (follower?.draft) {
            const verdict = judge(sampler, logits, follower.draft);
            stats.draftTokensProposed++;
            emitted = verdict.token;
            if (verdict.accepted) {
              stats.draftTokensAccepted++;
              follower.draft = undefined;
            } else {
              // Flush: every token newer than `leaving` is wrong; forget their cache entries everywhere.
              stats.verifications++;
              for (let s = 0; s < k - 2; s++) if (slots[s]) stats.draftTokensDiscarded! += 1;
              for (let s = 0; s < k - 1; s++) truncateAt[s] = leaving.pos + 1;
              slots = new Array(k).fill(null);
              restart = { pos: leaving.pos + 1, token: verdict.token };
            }
          } else {
            // Nothing was drafted behind it (the position cap): the model's own token.
            emitted = sampler.pick(logits);
            stats.verifications++;
            if (!follower) restart = { pos: leaving.pos + 1, token: emitted };
          }
        }
        for (let s = k - 1; s >= 1; s--) {
          const e = slots[s - 1];
          if (e) next[s] = { ...e, hidden: outs[s - 1]!.hidden };
        }
        const newest = slots[0];
        if (newest && newest.pos + 1 <= lastFed) {
          let draft = drafter.draft(outs[0]!, sampler);
          if (controlled) draft = controlled.apply(newest.pos + 1, draft);
          next[0] = { pos: newest.pos + 1, token: draft.token, draft };
        }
        if (restart && restart.pos <= lastFed) next[0] = restart;
        slots = next;
        if (emitted !== undefined) {
          stats.tokens++;
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

export interface StageWorkersOptions {
  /** One device per stage ('cpu' when absent). */
  devices?: string[];
  /** intra-op threads per stage session (1: one core per stage). */
  threadsPerStage?: number;
  maxSeqLen?: number;
  /** Retry on CPU when a stage's device is unavailable (default: when `log` is given). */
  allowCpuFallback?: boolean;
  log?: (msg: string) => void;
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
