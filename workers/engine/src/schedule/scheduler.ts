/**
 * The scheduler: the one owner of batched sessions, KV memory and the step loop (vLLM's scheduler role).
 *
 * - Admission: at most `maxBatch` sequences run; each reserves the KV memory its whole generation can
 *   need (prompt + max tokens, in every stage its decoder uses) from a pool of `kvBudgetBytes`. A sequence
 *   that does not fit waits, first come first served, so load can never run the process out of memory;
 *   one that could never fit is refused at once.
 * - Sessions: one BatchedOrtStage per stage spec (the full model for AR and DV's verifier, EESD's two
 *   halves, DV's layer-skipping draft), shared by every sequence; each sequence gets its own KvCache in
 *   each, as a SequenceStage.
 * - Execution: every SequenceStage forward goes through one StepLoop, which runs the batched steps.
 */
import type { ExitHead, LlamaModel } from '../model/llama';
import { headDim } from '../model/llama';
import type { Stage, StageSpec } from '../model/stage';
import { BatchedOrtStage } from '../runtime/batched-stage';
import { KvCache } from '../runtime/kv-cache';
import type { OrtStageOptions } from '../runtime/ort-stage';
import { SequenceStage } from './sequence-stage';
import { StepLoop } from './step-loop';

export interface SchedulerOptions {
  maxBatch: number;
  kvBudgetBytes: number;
  /** Session options of every batched stage (threads, device, maxSeqLen, accuracy level). */
  stage: OrtStageOptions;
  /** Rows one step runs at most once decode rows are in (the prefill budget). */
  maxStepRows?: number;
}

/** What a sequence reserves: cache rows per stage (prompt + max tokens) and their bytes over its stages. */
export interface KvReservation {
  rows: number;
  kvBytes: number;
}

/** A sequence's place in the batch: its KV reservation, given back by release(). */
export interface Admission extends KvReservation {
  /** Creates this sequence's view of the batched stage for `spec` (a decoder's createStage). */
  createStage(spec: StageSpec): Promise<Stage>;
  release(): void;
}

export class SequenceTooLargeError extends RangeError {
  override name = 'SequenceTooLargeError';
}

interface Waiter extends KvReservation {
  admit: (a: Admission | undefined) => void;
}

export class Scheduler {
  private readonly loop: StepLoop;
  private readonly hosts = new Map<string, BatchedOrtStage>();
  private readonly exitIds = new Map<ExitHead, number>();
  private readonly waiting: Waiter[] = [];
  private running = 0;
  private kvUsed = 0;

  constructor(
    private readonly model: LlamaModel,
    readonly options: SchedulerOptions,
  ) {
    if (!(Number.isInteger(options.maxBatch) && options.maxBatch >= 1))
      throw new RangeError(`maxBatch must be a positive integer, got ${options.maxBatch}`);
    if (!(options.kvBudgetBytes > 0))
      throw new RangeError(`the KV budget must be positive, got ${options.kvBudgetBytes}`);
    this.loop = new StepLoop({
      maxLanes: options.maxBatch,
      maxRows: options.maxStepRows ?? 128,
      shortRows: 16,
    });
  }

  /** Bytes one cached position takes across all layers (K and V, f32). */
  get bytesPerPosition(): number {
    const c = this.model.config;
    return 2 * c.nLayers * c.nKvHeads * headDim(c) * 4;
  }

  /**
   * Waits for a batch slot and `kvBytes` of KV memory. Resolves undefined when `signal` aborts first
   * (the sequence leaves the queue and holds nothing).
   */
  admit(need: KvReservation, signal?: AbortSignal): Promise<Admission | undefined> {
    const { kvBytes } = need;
    if (kvBytes > this.options.kvBudgetBytes) {
      const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
      throw new SequenceTooLargeError(
        `this generation needs ${mib(kvBytes)} of KV memory, more than the pool's ${mib(this.options.kvBudgetBytes)} (PPSD_KV_MEMORY)`,
      );
    }
    if (signal?.aborted) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const waiter: Waiter = { ...need, admit: resolve };
      this.waiting.push(waiter);
      signal?.addEventListener(
        'abort',
        () => {
          const i = this.waiting.indexOf(waiter);
          if (i < 0) return;
          this.waiting.splice(i, 1);
          resolve(undefined);
          this.admitWaiting();
        },
        { once: true },
      );
      this.admitWaiting();
    });
  }

  /** Admits waiting sequences in arrival order while the head of the queue fits. */
  private admitWaiting(): void {
    while (this.waiting.length > 0) {
      const head = this.waiting[0];
      if (this.running >= this.options.maxBatch) return;
      if (this.kvUsed + head.kvBytes > this.options.kvBudgetBytes) return;
      this.waiting.shift();
      this.running++;
      this.kvUsed += head.kvBytes;
      head.admit(this.admission(head));
    }
  }

  private admission({ rows, kvBytes }: KvReservation): Admission {
    let released = false;
    const stages: SequenceStage[] = [];
    const c = this.model.config;
    return {
      rows,
      kvBytes,
      createStage: async (spec) => {
        if (released) throw new Error('stage requested after the sequence left the batch');
        const L = spec.endLayer - spec.firstLayer;
        const stage = new SequenceStage(
          this.host(spec),
          this.loop,
          new KvCache(rows, L, c.nKvHeads, headDim(c)),
        );
        stages.push(stage);
        return stage;
      },
      release: () => {
        if (released) return;
        released = true;
        for (const s of stages) void s.release(); // the caches go with the stages
        this.running--;
        this.kvUsed -= kvBytes;
        this.admitWaiting();
      },
    };
  }

  /** The shared batched stage for `spec` (built on first use). */
  private host(spec: StageSpec): BatchedOrtStage {
    const key = this.specKey(spec);
    let host = this.hosts.get(key);
    if (!host) {
      host = new BatchedOrtStage(this.model, spec, this.options.maxBatch, this.options.stage);
      this.hosts.set(key, host);
    }
    return host;
  }

  private specKey(spec: StageSpec): string {
    let exit = 'none';
    if (spec.exit) {
      if (!this.exitIds.has(spec.exit)) this.exitIds.set(spec.exit, this.exitIds.size);
      exit = String(this.exitIds.get(spec.exit));
    }
    const skip = spec.skip ? `${spec.skip.attention.join(',')}|${spec.skip.mlp.join(',')}` : '';
    return `${spec.firstLayer}-${spec.endLayer}-exit${exit}-skip${skip}`;
  }

  /** Opens the sessions of `specs` for every lane count now (start-up, not the first requests, pays). */
  async warm(specs: StageSpec[]): Promise<void> {
    for (const spec of specs) await this.host(spec).warm();
  }

  stats() {
    return {
      running: this.running,
      waiting: this.waiting.length,
      maxBatch: this.options.maxBatch,
      kvUsedBytes: this.kvUsed,
      kvBudgetBytes: this.options.kvBudgetBytes,
      stepsByBatchSize: { ...this.loop.stepsByBatchSize },
    };
  }

  async close(): Promise<void> {
    const hosts = [...this.hosts.values()];
    this.hosts.clear();
    await Promise.all(hosts.map((h) => h.release()));
  }
}
