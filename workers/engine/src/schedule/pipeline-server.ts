/**
 * Pipeline-parallel serving: the PPSD pipeline shared by every PPSD sequence in flight.
 *
 * Each stage of the plan runs as one batched stage thread (stage-thread.ts) with a step loop of its
 * own, so the k stages run their steps at the same time, each on its own core, and every step of a
 * stage batches whatever sequences have reached it. Each sequence keeps its own verify-while-draft
 * controller (decode/pipeline.ts PipelineDecoder) over its own places in those threads
 * (SequenceThreadStage: its KV cache of the stage's layers lives in the thread), so it stays the same
 * lossless strategy it is alone.
 *
 * Speculation adapts to load for the sequences that leave it to the engine (`adaptive`: the request said
 * `decoder: 'auto'`; one that named PPSD always drafts, as asked). While fewer sequences than
 * `speculateBelow` are in flight, they draft: its draft runs in stage 1 while its previous token is verified in stage k, filling stages that
 * would otherwise idle. From there on nobody drafts: each sequence runs plain pipelined AR (its token
 * passes the stages one after another) and the stages stay busy with other sequences' tokens instead;
 * each step then takes at most ceil(n / k) sequences, so the n sequences settle into k microbatches that
 * follow each other through the stages (vLLM's pipeline-parallel microbatching) rather than all moving
 * in one block, which would leave k - 1 stages idle.
 */

import { PipelineDecoder, type PipelineStage } from '../decode/pipeline';
import type { PpsdPlan } from '../decode/ppsd';
import type { OutReply } from '../decode/stage-protocol';
import type { RunRequest } from '../decode/worker-stage';
import { headDim, type LlamaModel } from '../model/llama';
import { forwardInChunks, type StageInput } from '../model/stage';
import { type Device, parseDevice } from '../runtime';
import { stageInputRows } from '../runtime/batched-stage';
import { PREFILL_CHUNK_ROWS } from './sequence-stage';
import { StageThread, type StageThreadOptions, type ThreadStageOutput } from './stage-thread';
import type { StageThreadItem } from './stage-thread-protocol';
import { type StepHost, StepLoop } from './step-loop';

export interface PipelineServerOptions extends Omit<StageThreadOptions, 'device'> {
  /** Most sequences in flight (the engine's maxBatch): the largest step a stage runs. */
  maxBatch: number;
  /** One device per stage (default cpu). */
  devices?: Device[];
  /** Sequences in flight below which every sequence drafts (default: the pipeline depth k). */
  speculateBelow?: number;
  /**
   * Called once when a stage thread exits on its own (a crash): the server is then broken. Sequences in
   * it fail; it refuses new ones and closes its other threads once the last has ended, so its owner
   * should start a new server for later sequences.
   */
  onBroken?: (err: Error) => void;
}

type ThreadLoop = StepLoop<StageThreadItem, ThreadStageOutput>;

/** What the served pipeline has run (for tests and benchmarks; counts, not times). */
export interface PipelineServerStats {
  /** Steps run per stage. */
  steps: number[];
  /** Steps that started while another stage's step was running: the stages really overlapped. */
  overlappedSteps: number;
  /** Sequences that drafted at least once. */
  draftingSequences: number;
  /** Per stage: steps by the number of sequences they ran. */
  stepsByBatchSize: Record<number, number>[];
}

export class PipelineServer {
  private active = 0;
  /** Sequences in flight that always draft (they named PPSD). */
  private forced = 0;
  private nextSeq = 0;
  private readonly speculateBelow: number;
  private running = 0;
  readonly counts: PipelineServerStats;
  /** Per stage, the one host its step loop batches on (the planner batches forwards of one host). */
  private readonly hosts: SequenceHost[];
  /** Why the server stopped serving (a stage thread died). */
  private broken?: Error;
  private closing?: Promise<void>;

  private constructor(
    private readonly model: LlamaModel,
    private readonly plan: PpsdPlan,
    private readonly threads: StageThread[],
    private readonly loops: ThreadLoop[],
    private readonly maxBatch: number,
    speculateBelow: number | undefined,
  ) {
    this.speculateBelow = speculateBelow ?? threads.length;
    this.counts = {
      steps: threads.map(() => 0),
      overlappedSteps: 0,
      draftingSequences: 0,
      stepsByBatchSize: loops.map((l) => l.stepsByBatchSize),
    };
    this.hosts = threads.map((t, j) => this.meter(t, j));
  }

  /** Starts one batched stage thread per stage of `plan` (their sessions made concurrently). */
  static async start(
    model: LlamaModel,
    plan: PpsdPlan,
    opts: PipelineServerOptions,
  ): Promise<PipelineServer> {
    if (plan.specs.length < 2) throw new Error('a pipeline server needs at least 2 stages');
    const started = await Promise.allSettled(
      plan.specs.map((spec, j) =>
        StageThread.start(model, spec, opts.maxBatch, {
          ...opts,
          device: parseDevice(opts.devices?.[j] ?? 'cpu'),
        }),
      ),
    );
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) {
      await Promise.all(started.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
      throw (failed as PromiseRejectedResult).reason;
    }
    const threads = started.map((r) => (r as PromiseFulfilledResult<StageThread>).value);
    let server: PipelineServer | undefined;
    const laneCap = () => server?.laneCap() ?? opts.maxBatch;
    const loops = threads.map(
      () =>
        new StepLoop<StageThreadItem, ThreadStageOutput>(
          { maxLanes: opts.maxBatch, maxRows: 128, shortRows: 16 },
          laneCap,
        ),
    );
    const built = new PipelineServer(model, plan, threads, loops, opts.maxBatch, opts.speculateBelow);
    server = built;
    for (const t of threads) t.onUnexpectedExit((err) => built.breakDown(err, opts.onBroken));
    return built;
  }

  get depth(): number {
    return this.threads.length;
  }

  /** Bytes one cached position of a sequence takes across every stage (K and V, f32). */
  get bytesPerPosition(): number {
    const c = this.model.config;
    const layers = this.plan.specs.reduce((n, s) => n + s.endLayer - s.firstLayer, 0);
    return 2 * layers * c.nKvHeads * headDim(c) * 4;
  }

  /** Whether sequences draft now (few in flight: drafts fill stages that would otherwise idle). */
  speculating(): boolean {
    return this.active < this.speculateBelow;
  }

  /** The most sequences one stage step takes now: all while any drafts, else one microbatch of k. */
  private laneCap(): number {
    if (this.speculating() || this.forced > 0) return this.maxBatch;
    return Math.max(1, Math.ceil(this.active / this.depth));
  }

  /**
   * Runs `generate` with a decoder of one sequence of at most `rows` positions (prompt + max tokens):
   * its caches are opened in every stage thread, and freed when it ends, once its last step is done.
   */
  async withSequence<T>(
    rows: number,
    adaptive: boolean,
    generate: (decoder: PipelineDecoder<SequenceThreadStage>) => Promise<T>,
  ): Promise<T> {
    if (this.broken) throw new Error(`the served pipeline is down: ${this.broken.message}`);
    const seq = this.nextSeq++;
    const stages = this.threads.map((t, j) => {
      t.openSequence(seq, rows);
      return new SequenceThreadStage(this.hosts[j], this.loops[j], seq, rows, this.model, j === 0);
    });
    let drafted = false;
    const draftWhen = () => {
      const yes = !adaptive || this.speculating();
      if (yes && !drafted) {
        drafted = true;
        this.counts.draftingSequences++;
      }
      return yes;
    };
    const decoder = new PipelineDecoder(stages, this.plan.drafter(), { ...this.plan.options, draftWhen });
    this.active++;
    if (!adaptive) this.forced++;
    try {
      return await generate(decoder);
    } finally {
      this.active--;
      if (!adaptive) this.forced--;
      await decoder.close();
      if (this.broken && this.active === 0) void this.close();
    }
  }

  /** A stage thread died: fail over to the owner (once), and close the rest when no sequence is left. */
  private breakDown(err: Error, onBroken?: (err: Error) => void): void {
    if (this.broken) return;
    this.broken = err;
    onBroken?.(err);
    if (this.active === 0) void this.close();
  }

  /** Stage j's thread as its step loop sees it, counting steps and overlaps. */
  private meter(thread: StageThread, j: number): SequenceHost {
    return {
      release: (seq) => thread.release(seq),
      run: async (items) => {
        this.counts.steps[j]++;
        if (this.running > 0) this.counts.overlappedSteps++;
        this.running++;
        try {
          return await thread.run(items);
        } finally {
          this.running--;
        }
      },
    };
  }

  close(): Promise<void> {
    this.closing ??= Promise.all(this.threads.map((t) => t.close())).then(() => undefined);
    return this.closing;
  }
}

/**
 * One sequence's place in a batched stage thread, as a pipeline stage: its runs go through the stage's
 * step loop; its KV cache lives in the thread. It tracks the cache length itself, so a run that does not
 * follow on (a controller bug) fails here, alone, instead of failing a step shared with others.
 */
/** What a sequence's stage needs of its thread. */
type SequenceHost = StepHost<StageThreadItem, ThreadStageOutput> & Pick<StageThread, 'release'>;

export class SequenceThreadStage implements PipelineStage {
  private length = 0;
  private last: Promise<unknown> = Promise.resolve();
  private closed?: Promise<void>;

  constructor(
    private readonly thread: SequenceHost,
    private readonly loop: ThreadLoop,
    private readonly seq: number,
    private readonly rows: number,
    private readonly model: LlamaModel,
    private readonly first: boolean,
  ) {}

  run(req: RunRequest): Promise<OutReply> {
    const run = this.closed ? Promise.reject(new Error('stage used after close()')) : this.forward(req);
    this.last = run.catch(() => undefined);
    return run;
  }

  private async forward(req: RunRequest): Promise<OutReply> {
    if (req.truncate !== undefined) this.length = Math.min(this.length, req.truncate);
    if (req.position !== this.length)
      throw new Error(
        `sequence stage holds ${this.length} positions, the controller expected ${req.position}`,
      );
    const input: StageInput = { tokens: req.tokens, hidden: req.hidden, logitRows: req.logitRows };
    const T = stageInputRows(this.model.config, this.first, input);
    if (this.length + T > this.rows)
      throw new Error(`sequence of ${this.rows} positions has no room for ${T} more after ${this.length}`);
    this.length += T;
    let truncate = req.truncate;
    let busyMs = 0;
    const out = await forwardInChunks(
      async (chunk) => {
        const item: StageThreadItem = { seq: this.seq, truncate, ...chunk };
        truncate = undefined; // the flush rides on the first chunk only
        const rows = chunk.tokens?.length ?? chunk.hidden!.length / this.model.config.dim;
        const o = await this.loop.submit(this.thread, item, rows);
        busyMs += o.busyMs;
        return o;
      },
      input,
      T,
      PREFILL_CHUNK_ROWS,
    );
    const { hidden, logits, exitLogits, exitHidden } = out;
    return { type: 'out', id: 0, hidden, logits, exitLogits, exitHidden, busyMs };
  }

  /** Frees the sequence's cache in the thread, after the last run it sent (finished or not) is done. */
  close(): Promise<void> {
    this.closed ??= this.last.then(() => this.thread.release(this.seq));
    return this.closed;
  }
}
