/**
 * A stage that runs many sequences' rows in one forward: one batched ORT graph (graph/llama-graph.ts,
 * `lanes`) over the stage's layers, and per sequence its own KvCache that the graph reads through zero-copy
 * views, exactly as a single-sequence OrtStage does. Each forward packs the new rows of up to `lanes`
 * sequences into one [T, dim] block, so each weight matrix is read once for all of them.
 *
 * Graphs are built per lane count on first use (1, 4, 16, ... up to maxLanes): a batch of n sequences runs
 * on the smallest one with n lanes or more, the unused lanes get a 1-row dummy (cut from the output), so a
 * small batch pays no more than its own rows in every matrix multiply. An unused lane still runs its
 * attention nodes, though: once `warm()` has measured what each bucket costs, a batch that fills its
 * bucket badly (5 sequences in 16 lanes) runs as several runs of a smaller bucket in turn when that is
 * clearly cheaper (planLaneRuns). A sequence's numbers do not depend on which run it is in (test/engine/batched-stage.test.ts).
 */
import { type InferenceSession, Tensor } from 'onnxruntime-node';
import { buildStageModel, IO, laneIO, validateStageSpec } from '../graph/llama-graph';
import type { ExternalModel } from '../graph/onnx';
import { consistentRows } from '../graph/weights';
import { headDim, type LlamaConfig, type LlamaModel, stageMatrices } from '../model/llama';
import type { StageInput, StageOutput, StageSpec } from '../model/stage';
import { createSession, type SessionConfig } from './device';
import { KvCache } from './kv-cache';
import type { OrtStageOptions } from './ort-stage';

/** One sequence's part of a batched forward: its cache and its new rows (tokens or hidden). */
export interface BatchItem {
  cache: KvCache;
  input: StageInput;
}

/**
 * Lane counts graphs are built for (1, 4, 16, 64, ..., capped at maxLanes): a batch of n runs on the
 * smallest bucket >= n. Powers of four keep the sessions few (each holds its own prepacked weights),
 * and an unused lane costs only a 1-row attention per layer.
 */
export function laneBucket(n: number, maxLanes: number): number {
  let lanes = 1;
  while (lanes < n) lanes *= 4;
  return Math.min(lanes, maxLanes);
}

/**
 * What a forward costs, measured per stage: `fixed[b]` the ms of a one-sequence decode step on the b-lane
 * graph (its weight reads plus every lane's attention nodes), `perLane` the ms each further sequence adds.
 */
export interface LaneRunCosts {
  fixed: Map<number, number>;
  perLane: number;
}

/** A step's runs: `runs[i]` sequences each, one after another, all on the `lanes`-lane graph. */
export interface LaneRunPlan {
  lanes: number;
  runs: number[];
}

/**
 * A split must be predicted this much cheaper than one run to be taken: the costs come from short
 * warm-up steps (a 32-row past) and are off by 10-25% at longer ones (a mispredicted split runs slower).
 */
export const SPLIT_MARGIN = 0.9;

/** The past each sequence holds while warm() times the buckets (short: it runs at every engine start). */
const COST_PAST = 32;
/** The most lanes the per-sequence timing fills (64 x 32 rows would make engine starts slow). */
const COST_PROBE_LANES = 16;

/**
 * How n sequences run: one run on the smallest bucket with n lanes, or, when the measured costs say
 * ceil(n / b) runs on a smaller bucket b are cheaper (r x fixed[b] + perLane x (n - r)), those. All runs of
 * a step use one graph: two sessions in turn each keep their own intra-op threads spinning, which
 * measured far slower on a 2-core CPU (5 sequences as a 4-lane then a 1-lane run: 38 ms against 16).
 */
export function planLaneRuns(n: number, maxLanes: number, costs?: LaneRunCosts): LaneRunPlan {
  const lanes = laneBucket(n, maxLanes);
  const whole = costs?.fixed.get(lanes);
  if (!costs || whole === undefined || n <= 1) return { lanes, runs: [n] };
  let best = { lanes, r: 1, ms: SPLIT_MARGIN * (whole + costs.perLane * (n - 1)) };
  for (const [b, fixed] of costs.fixed) {
    if (b >= lanes) continue;
    const r = Math.ceil(n / b);
    const ms = r * fixed + costs.perLane * (n - r);
    if (ms < best.ms) best = { lanes: b, r, ms };
  }
  // r runs as even as they can be (the larger first)
  const runs = Array.from({ length: best.r }, (_, i) => Math.floor(n / best.r) + (i < n % best.r ? 1 : 0));
  return { lanes: best.lanes, runs };
}

/**
 * Whether any split could pay with these fixed costs: where the weights dominate (large models), two
 * runs of a bucket cost more than one of the next, and warm() skips the full-bucket timing.
 */
export function splitCanPay(fixed: Map<number, number>): boolean {
  const buckets = [...fixed.keys()].sort((a, b) => a - b);
  return buckets.some((b, i) => i > 0 && 2 * fixed.get(buckets[i - 1])! < SPLIT_MARGIN * fixed.get(b)!);
}

/** Every lane bucket a stage of `maxLanes` lanes builds a graph for. */
export function laneBuckets(maxLanes: number): number[] {
  const out = new Set<number>();
  for (let n = 1; n <= maxLanes; n++) out.add(laneBucket(n, maxLanes));
  return [...out];
}

/**
 * A batched stage's graphs when they do not come from a model in this thread: a stage thread receives
 * them as bytes (built where the weights are) with what else the stage needs to know.
 */
export interface LaneGraphs {
  config: LlamaConfig;
  consistentRows?: number;
  graph(lanes: number): Uint8Array | ExternalModel;
}

export class BatchedOrtStage {
  private readonly sessions = new Map<number, Promise<InferenceSession>>();
  private readonly first: boolean;
  private readonly last: boolean;
  private readonly kvH: number;
  private readonly hd: number;
  private readonly L: number;
  /** The 1-row past of an unused lane (its rows are a copy of row 0, its output is dropped). */
  private readonly dummyPast: Tensor;
  /** See Stage.consistentRows: the largest block whose rows do not depend on the rows beside them. */
  readonly consistentRows?: number;

  readonly config: LlamaConfig;
  private readonly graphs: LaneGraphs;
  /** Measured by warm(); a batch is split into smaller buckets' runs only once these are known. */
  runCosts?: LaneRunCosts;

  constructor(
    source: LlamaModel | LaneGraphs,
    readonly spec: StageSpec,
    readonly maxLanes: number,
    private readonly opts: OrtStageOptions = {},
  ) {
    const c = source.config;
    this.config = c;
    validateStageSpec(spec, c.nLayers);
    this.graphs = 'weights' in source ? modelGraphs(source, spec, opts) : source;
    this.first = spec.firstLayer === 0;
    this.last = spec.endLayer === c.nLayers;
    this.kvH = c.nKvHeads;
    this.hd = headDim(c);
    this.L = spec.endLayer - spec.firstLayer;
    this.dummyPast = new Tensor('float32', new Float32Array(this.kvH * this.hd), [1, this.kvH, this.hd]);
    this.consistentRows = this.graphs.consistentRows;
  }

  /** Floats one cached position takes in this stage's layers (K and V). */
  get floatsPerPosition(): number {
    return 2 * this.L * this.kvH * this.hd;
  }

  /** Builds (once) and returns the session of the graph with `lanes` lanes. */
  private session(lanes: number): Promise<InferenceSession> {
    let s = this.sessions.get(lanes);
    if (!s) {
      const graph = this.graphs.graph(lanes);
      const cfg: SessionConfig = { ...this.opts };
      s = createSession(graph, cfg).then((r) => r.session);
      this.sessions.set(lanes, s);
      s.catch(() => this.sessions.delete(lanes));
    }
    return s;
  }

  /**
   * Opens the sessions for every bucket up to `n` lanes now (so the first batches do not pay for it), and
   * measures what each costs (runCosts) when the buckets up to maxLanes are all open.
   */
  async warm(n = this.maxLanes): Promise<void> {
    const want = laneBuckets(this.maxLanes).filter((lanes) => lanes <= laneBucket(n, this.maxLanes));
    await Promise.all(want.map((lanes) => this.session(lanes)));
    if (want.length > 1 && laneBucket(n, this.maxLanes) === this.maxLanes)
      this.runCosts = await this.measureCosts(want);
  }

  /**
   * Times one-row-per-sequence decode steps on throwaway caches holding a short past (COST_PAST rows):
   * each bucket with one sequence (its fixed cost), then, if a split could pay at all, a bucket of up to
   * COST_PROBE_LANES lanes full (the per-sequence cost).
   * Best of 5 steps, after one untimed step (a session's first run allocates its buffers).
   */
  private async measureCosts(buckets: number[]): Promise<LaneRunCosts | undefined> {
    const c = this.config;
    const past = Math.min(COST_PAST, c.maxSeqLen - 8);
    const rows = (n: number): StageInput =>
      this.first ? { tokens: new Int32Array(n) } : { hidden: new Float32Array(n * c.dim) };
    const time = async (lanes: number, used: number) => {
      const caches = Array.from({ length: used }, () => new KvCache(past + 8, this.L, this.kvH, this.hd));
      const step = (T: number, logitRows?: number) =>
        this.runOn(
          lanes,
          caches.map((cache) => ({ cache, input: { ...rows(T), logitRows } })),
          caches.map(() => T),
        );
      await step(past, 1);
      let ms = Number.POSITIVE_INFINITY;
      for (let r = -1; r < 5; r++) {
        const t0 = performance.now();
        await step(1);
        if (r >= 0) ms = Math.min(ms, performance.now() - t0);
      }
      return ms;
    };
    const fixed = new Map<number, number>();
    for (const b of buckets) fixed.set(b, await time(b, 1));
    if (!splitCanPay(fixed)) return undefined;
    const probe = buckets.filter((b) => b <= COST_PROBE_LANES).at(-1)!;
    const perLane = Math.max(0, ((await time(probe, probe)) - fixed.get(probe)!) / (probe - 1));
    return { fixed, perLane };
  }

  /**
   * One batched forward: every item's rows appended to its own cache, and per item what a single
   * sequence's forward would return (hidden / logits / exit outputs of its rows).
   */
  async run(items: BatchItem[]): Promise<StageOutput[]> {
    const n = items.length;
    if (n < 1 || n > this.maxLanes) throw new Error(`a batch holds 1..${this.maxLanes} sequences, got ${n}`);
    // every input is checked before any run appends to a cache
    const rows = items.map((it) => this.checkInput(it.input, it.cache));
    const plan = planLaneRuns(n, this.maxLanes, this.runCosts);
    if (plan.runs.length === 1) return this.runOn(plan.lanes, items, rows);
    const outs: StageOutput[] = [];
    let at = 0;
    for (const u of plan.runs) {
      outs.push(...(await this.runOn(plan.lanes, items.slice(at, at + u), rows.slice(at, at + u))));
      at += u;
    }
    return outs;
  }

  /** One forward of `items` (of `rows` rows each, checked) on the `lanes`-lane graph. */
  private async runOn(lanes: number, items: BatchItem[], rows: number[]): Promise<StageOutput[]> {
    const n = items.length;
    const c = this.config;
    const logitRows = items.map((it, i) => it.input.logitRows ?? rows[i]);
    const T = rows.reduce((a, b) => a + b, 0);
    const feeds: Record<string, Tensor> = {};
    feeds[this.first ? IO.tokens : IO.hiddenIn] = this.packInput(items, T);
    const positions = new BigInt64Array(T);
    const bounds = new BigInt64Array(2 * lanes);
    const logitIndex: bigint[] = [];
    let at = 0;
    items.forEach((it, i) => {
      const P = it.cache.length;
      for (let t = 0; t < rows[i]; t++) positions[at + t] = BigInt(P + t);
      bounds[2 * i] = BigInt(at);
      bounds[2 * i + 1] = BigInt(at + rows[i]);
      for (let t = rows[i] - logitRows[i]; t < rows[i]; t++) logitIndex.push(BigInt(at + t));
      const past = it.cache.graphPast();
      const dims = it.cache.graphPastDims;
      for (let j = 0; j < this.L; j++) {
        feeds[laneIO(IO.pastK, j, i)] = new Tensor('float32', past.k[j], dims);
        feeds[laneIO(IO.pastV, j, i)] = new Tensor('float32', past.v[j], dims);
      }
      at += rows[i];
    });
    for (let i = n; i < lanes; i++) {
      // an unused lane: attention for one zero row (cut from the output) over a 1-row dummy past
      bounds[2 * i] = 0n;
      bounds[2 * i + 1] = 1n;
      for (let j = 0; j < this.L; j++) {
        feeds[laneIO(IO.pastK, j, i)] = this.dummyPast;
        feeds[laneIO(IO.pastV, j, i)] = this.dummyPast;
      }
    }
    feeds[IO.positions] = new Tensor('int64', positions, [T]);
    feeds[IO.laneBounds] = new Tensor('int64', bounds, [2 * lanes]);
    // the split of the rows padded with `lanes` zero rows: each used lane's, 1 per unused lane, the rest
    const laneRows = new BigInt64Array(lanes + 1);
    for (let i = 0; i < lanes; i++) laneRows[i] = i < n ? BigInt(rows[i]) : 1n;
    laneRows[lanes] = BigInt(n);
    feeds[IO.laneRows] = new Tensor('int64', laneRows, [lanes + 1]);
    if (this.last || this.spec.exit)
      feeds[IO.logitIndex] = new Tensor('int64', BigInt64Array.from(logitIndex), [logitIndex.length]);

    const res = await (await this.session(lanes)).run(feeds);
    const f32 = (name: string) => res[name].data as Float32Array;
    return this.unpack(items, rows, logitRows, f32, c.dim);
  }

  /** The rows of one sequence's forward, after checking everything about it that could fail the batch. */
  checkInput(input: StageInput, cache: KvCache): number {
    const T = stageInputRows(this.config, this.first, input);
    cache.checkRoom(T);
    return T;
  }

  /** The items' tokens [T] (first stage) or hidden rows [T, dim], in lane order. */
  private packInput(items: BatchItem[], T: number): Tensor {
    const c = this.config;
    if (this.first) {
      const ids = new BigInt64Array(T);
      let at = 0;
      for (const it of items) for (const t of it.input.tokens!) ids[at++] = BigInt(t);
      return new Tensor('int64', ids, [T]);
    }
    const hidden = new Float32Array(T * c.dim);
    let at = 0;
    for (const it of items) {
      hidden.set(it.input.hidden!, at);
      at += it.input.hidden!.length;
    }
    return new Tensor('float32', hidden, [T, c.dim]);
  }

  /** Appends each item's new K/V to its cache and cuts its outputs out of the batch's. */
  private unpack(
    items: BatchItem[],
    rows: number[],
    logitRows: number[],
    f32: (name: string) => Float32Array,
    dim: number,
  ): StageOutput[] {
    const rowK = this.L * this.kvH * this.hd;
    const newK = f32(IO.newK);
    const newV = f32(IO.newV);
    const logits = this.last ? f32(IO.logits) : undefined;
    const hidden = this.last ? undefined : f32(IO.hidden);
    const exitLogits = this.spec.exit ? f32(IO.exitLogits) : undefined;
    const exitHidden = this.spec.exit ? f32(IO.exitHidden) : undefined;
    const vocabOut = (x: Float32Array) => x.length / logitRows.reduce((a, b) => a + b, 0);
    let at = 0;
    let r = 0;
    return items.map((it, i) => {
      const T = rows[i];
      const R = logitRows[i];
      it.cache.append(
        newK.subarray(at * rowK, (at + T) * rowK),
        newV.subarray(at * rowK, (at + T) * rowK),
        T,
      );
      const out: StageOutput = { rows: T };
      const cut = (x: Float32Array, width: number, from: number, n: number) =>
        x.subarray(from * width, (from + n) * width);
      if (logits) out.logits = cut(logits, vocabOut(logits), r, R);
      if (hidden) out.hidden = cut(hidden, dim, at, T);
      if (exitLogits) out.exitLogits = cut(exitLogits, vocabOut(exitLogits), r, R);
      if (exitHidden) out.exitHidden = cut(exitHidden, dim, at, T);
      at += T;
      r += R;
      return out;
    });
  }

  async release(): Promise<void> {
    const all = await Promise.allSettled(this.sessions.values());
    this.sessions.clear();
    await Promise.all(all.map((s) => (s.status === 'fulfilled' ? s.value.release() : undefined)));
  }
}

/**
 * The rows of one sequence's forward at a stage (the first takes tokens, the others hidden rows), after
 * checking everything about the input that would otherwise fail a whole batch.
 */
export function stageInputRows(c: LlamaConfig, first: boolean, input: StageInput): number {
  let T: number;
  if (first) {
    if (!input.tokens) throw new Error('the first stage needs tokens');
    T = input.tokens.length;
    for (const t of input.tokens)
      if (!(t >= 0 && t < c.vocabSize))
        throw new Error(`token ${t} outside the vocabulary [0, ${c.vocabSize})`);
  } else {
    if (!input.hidden) throw new Error("a later stage needs the previous stage's hidden states");
    T = input.hidden.length / c.dim;
  }
  if (!(Number.isInteger(T) && T >= 1))
    throw new Error(`a forward needs whole rows (at least one), got ${T}`);
  const R = input.logitRows ?? T;
  if (!(Number.isInteger(R) && R >= 1 && R <= T)) throw new Error(`logitRows ${R} must lie in [1, ${T}]`);
  return T;
}

/** Graphs built on demand from the model's own arrays (external data: no serialized weight copy). */
function modelGraphs(model: LlamaModel, spec: StageSpec, opts: OrtStageOptions): LaneGraphs {
  return {
    config: model.config,
    consistentRows: consistentRows(stageMatrices(model, spec), opts.accuracyLevel),
    graph: (lanes) =>
      buildStageModel(model, spec, { maxSeqLen: opts.maxSeqLen, accuracyLevel: opts.accuracyLevel, lanes }),
  };
}
