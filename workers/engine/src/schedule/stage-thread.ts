/**
 * The engine's handle on one batched pipeline stage running in its own thread (stage-thread-worker.ts).
 * It is a StepHost: a StepLoop of its own sends it steps, so the stages of a pipeline run their steps
 * at the same time, each on its own core, while each keeps batching every sequence that reached it.
 */
import type { Worker } from 'node:worker_threads';
import { buildStageGraph } from '../graph/llama-graph';
import { consistentRows } from '../graph/weights';
import { type LlamaModel, stageMatrices } from '../model/llama';
import type { StageOutput, StageSpec } from '../model/stage';
import { laneBuckets } from '../runtime/batched-stage';
import type { OrtStageOptions } from '../runtime/ort-stage';
import { spawnModuleWorker } from '../threads';
import type { FromStageThread, StageThreadItem, ToStageThread } from './stage-thread-protocol';
import type { StepHost } from './step-loop';

/** A step's output for one sequence, with the time the thread spent on the whole step. */
export interface ThreadStageOutput extends StageOutput {
  busyMs: number;
}

export type StageThreadOptions = Pick<
  OrtStageOptions,
  'device' | 'threads' | 'maxSeqLen' | 'accuracyLevel' | 'allowCpuFallback'
>;

const spawn = () => spawnModuleWorker(new URL('./stage-thread-worker.ts', import.meta.url));

export class StageThread implements StepHost<StageThreadItem, ThreadStageOutput> {
  device = 'cpu';
  private readonly worker: Worker;
  private readonly pending = new Map<
    number,
    { resolve: (outs: ThreadStageOutput[]) => void; reject: (e: Error) => void }
  >();
  private nextId = 0;
  private exited = false;
  private ready?: { resolve: () => void; reject: (e: Error) => void };
  private closed?: Promise<void>;

  private constructor(
    readonly spec: StageSpec,
    readonly consistentRows: number | undefined,
  ) {
    this.worker = spawn();
    this.worker.on('message', (msg: FromStageThread) => this.onMessage(msg));
    this.worker.on('error', (err) => this.failAll(err));
    this.worker.on('exit', (code) => {
      this.exited = true;
      this.failAll(new Error(`stage thread [${spec.firstLayer}, ${spec.endLayer}) exited (code ${code})`));
    });
  }

  /**
   * Builds the stage's graph for every lane bucket up to `maxLanes` here (where the weights are), one at
   * a time, transfers each to a new thread and waits until its sessions are made.
   */
  static async start(
    model: LlamaModel,
    spec: StageSpec,
    maxLanes: number,
    opts: StageThreadOptions = {},
  ): Promise<StageThread> {
    const maxSeqLen = opts.maxSeqLen ?? model.config.maxSeqLen;
    const rowsSafe = consistentRows(stageMatrices(model, spec), opts.accuracyLevel);
    const st = new StageThread(spec, rowsSafe);
    const ready = new Promise<void>((resolve, reject) => {
      st.ready = { resolve, reject };
    });
    for (const lanes of laneBuckets(maxLanes)) {
      let bytes = buildStageGraph(model, spec, { maxSeqLen, accuracyLevel: opts.accuracyLevel, lanes });
      if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength) bytes = bytes.slice();
      st.post({ type: 'graph', lanes, bytes }, [bytes.buffer as ArrayBuffer]);
    }
    // the thread needs the spec's shape only: the head's weights are inside the graphs
    const light: StageSpec = { ...spec, exit: spec.exit && { afterLayer: spec.exit.afterLayer } };
    st.post({
      type: 'init',
      config: model.config,
      spec: light,
      maxLanes,
      consistentRows: rowsSafe,
      opts: {
        device: opts.device,
        threads: opts.threads,
        maxSeqLen,
        allowCpuFallback: opts.allowCpuFallback,
      },
    });
    try {
      await ready;
      st.keepAlive();
    } catch (err) {
      await st.close();
      throw err;
    }
    return st;
  }

  /** A sequence's cache of `rows` positions in this stage's layers. */
  open(seq: number, rows: number): void {
    this.post({ type: 'open', seq, rows });
  }

  /** Frees a sequence's cache (after every step it is in has been sent). */
  release(seq: number): void {
    if (!this.exited && !this.closed) this.post({ type: 'release', seq });
  }

  /** One batched step over `items` (each sequence at most once). */
  run(items: StageThreadItem[]): Promise<ThreadStageOutput[]> {
    if (this.exited || this.closed) return Promise.reject(new Error('stage thread is closed'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.keepAlive();
      this.post({ type: 'step', id, items });
    });
  }

  /** Lets the thread finish its queue, release its sessions and exit by itself (never terminate()). */
  close(): Promise<void> {
    this.closed ??= this.exited
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          this.worker.ref();
          this.worker.once('exit', () => resolve());
          this.post({ type: 'close' });
        });
    return this.closed;
  }

  private post(msg: ToStageThread, transfer: ArrayBuffer[] = []): void {
    this.worker.postMessage(msg, transfer);
  }

  /** Idle, the thread does not keep the process alive; with steps pending or while closing it does. */
  private keepAlive(): void {
    if (this.pending.size > 0 || this.closed) this.worker.ref();
    else this.worker.unref();
  }

  private onMessage(msg: FromStageThread): void {
    switch (msg.type) {
      case 'ready':
        this.device = msg.device;
        this.ready?.resolve();
        return;
      case 'out': {
        const p = this.take(msg.id);
        p?.resolve(msg.outs.map((o) => ({ ...o, busyMs: msg.busyMs })));
        return;
      }
      case 'error': {
        const err = new Error(msg.message);
        if (msg.id === undefined) this.ready?.reject(err);
        else this.take(msg.id)?.reject(err);
        return;
      }
      case 'closed':
        return;
    }
  }

  private take(id: number) {
    const p = this.pending.get(id);
    this.pending.delete(id);
    this.keepAlive();
    return p;
  }

  private failAll(err: Error): void {
    this.ready?.reject(err);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
