/**
 * The controller's handle on one stage Worker (stage-worker.ts): start it, send it runs, close it.
 * Replies come back in order; each run resolves with the Worker's output, whose buffers were transferred.
 */
import type { Worker } from 'node:worker_threads';
import { buildStageGraph } from '../graph/llama-graph';
import type { AccuracyLevel } from '../graph/weights';
import type { LlamaModel } from '../model/llama';
import type { StageSpec } from '../model/stage';
import type { Device } from '../runtime';
import { spawnModuleWorker } from '../threads';
import type { FromWorker, OutReply, RunMessage, ToWorker } from './stage-protocol';

export interface WorkerStageOptions {
  device?: Device;
  /** intra-op threads of this stage's session (one per core it owns). */
  threads?: number;
  maxSeqLen?: number;
  accuracyLevel?: AccuracyLevel;
  allowCpuFallback?: boolean;
}

export type RunRequest = Omit<RunMessage, 'type' | 'id'>;

const spawnStageWorker = () => spawnModuleWorker(new URL('./stage-worker.ts', import.meta.url));

export class WorkerStage {
  /** The device the session really runs on (cpu after a fallback). */
  device = 'cpu';
  private readonly worker: Worker;
  private readonly pending = new Map<
    number,
    { resolve: (r: OutReply) => void; reject: (e: Error) => void }
  >();
  private nextId = 0;
  private exited = false;
  private ready?: { resolve: () => void; reject: (e: Error) => void };
  private closed?: Promise<void>;

  private constructor(readonly spec: StageSpec) {
    this.worker = spawnStageWorker();
    this.worker.on('message', (msg: FromWorker) => this.onMessage(msg));
    this.worker.on('error', (err) => this.failAll(err));
    this.worker.on('exit', (code) => {
      this.exited = true;
      this.failAll(new Error(`stage worker [${spec.firstLayer}, ${spec.endLayer}) exited (code ${code})`));
    });
  }

  /** Builds the stage graph here, transfers its bytes to a new Worker and waits for its session. */
  static async start(
    model: LlamaModel,
    spec: StageSpec,
    opts: WorkerStageOptions = {},
  ): Promise<WorkerStage> {
    const maxSeqLen = opts.maxSeqLen ?? model.config.maxSeqLen;
    let graph = buildStageGraph(model, spec, { maxSeqLen, accuracyLevel: opts.accuracyLevel });
    // Transfer only a buffer the graph owns outright (never one shared with model weights).
    if (graph.byteOffset !== 0 || graph.byteLength !== graph.buffer.byteLength) graph = graph.slice();
    const ws = new WorkerStage(spec);
    const ready = new Promise<void>((resolve, reject) => {
      ws.ready = { resolve, reject };
    });
    // The Worker needs the spec's shape only: the head weights are already inside the graph bytes.
    const light: StageSpec = { ...spec, exit: spec.exit && { afterLayer: spec.exit.afterLayer } };
    const info = { config: model.config, spec: light, maxSeqLen };
    const msg: ToWorker = {
      type: 'init',
      graph,
      info,
      opts: {
        device: opts.device,
        threads: opts.threads,
        maxSeqLen,
        allowCpuFallback: opts.allowCpuFallback,
      },
    };
    ws.worker.postMessage(msg, [graph.buffer as ArrayBuffer]);
    try {
      await ready;
      ws.keepAlive();
    } catch (err) {
      await ws.close();
      throw err;
    }
    return ws;
  }

  /** Queues one forward; the hidden input's buffer is transferred (the caller must not touch it again). */
  run(req: RunRequest): Promise<OutReply> {
    if (this.exited || this.closed) return Promise.reject(new Error('stage worker is closed'));
    const id = this.nextId++;
    const msg: ToWorker = { type: 'run', id, ...req };
    return new Promise<OutReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.keepAlive();
      this.worker.postMessage(msg, req.hidden ? [req.hidden.buffer as ArrayBuffer] : []);
    });
  }

  /** Forgets cached positions >= length (queued behind any run in flight). */
  truncate(length: number): void {
    if (!this.exited && !this.closed)
      this.worker.postMessage({ type: 'truncate', length } satisfies ToWorker);
  }

  /**
   * Asks the Worker to finish what it has queued, release its session and exit by itself. Never
   * terminate(): tearing a Worker down inside session.run() aborts the whole process.
   */
  close(): Promise<void> {
    this.closed ??= this.exited
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          this.worker.ref();
          this.worker.once('exit', () => resolve());
          this.worker.postMessage({ type: 'close' } satisfies ToWorker);
        });
    return this.closed;
  }

  /**
   * An idle Worker does not keep the process alive (a CLI that forgets close() still exits, and exiting
   * is safe while no run is in flight); one with runs pending, starting or closing does, so the process
   * can never exit under a Worker inside run().
   */
  private keepAlive(): void {
    if (this.pending.size > 0 || this.closed) this.worker.ref();
    else this.worker.unref();
  }

  private onMessage(msg: FromWorker): void {
    switch (msg.type) {
      case 'ready':
        this.device = msg.device;
        this.ready?.resolve();
        return;
      case 'out': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        this.keepAlive();
        p?.resolve(msg);
        return;
      }
      case 'error': {
        const err = new Error(msg.message);
        if (msg.id === undefined) {
          this.ready?.reject(err);
          return;
        }
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        this.keepAlive();
        p?.reject(err);
        return;
      }
      case 'closed':
        return;
    }
  }

  private failAll(err: Error): void {
    this.ready?.reject(err);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
