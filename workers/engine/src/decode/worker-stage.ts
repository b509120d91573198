/**
 * The controller's handle on one stage Worker (stage-worker.ts): start it, send it runs, close it.
 * Replies come back in order; each run resolves with the Worker's output, whose buffers were transferred.
 */
import { buildStageGraph } from '../graph/llama-graph';
import type { AccuracyLevel } from '../graph/weights';
import type { LlamaModel } from '../model/llama';
import type { StageSpec } from '../model/stage';
import type { Device } from '../runtime';
import { ThreadHandle } from '../thread-handle';
import type { OutReply, RunMessage, ToWorker } from './stage-protocol';

export interface WorkerStageOptions {
  device?: Device;
  /** intra-op threads of this stage's session (one per core it owns). */
  threads?: number;
  maxSeqLen?: number;
  accuracyLevel?: AccuracyLevel;
  allowCpuFallback?: boolean;
}

export type RunRequest = Omit<RunMessage, 'type' | 'id'>;

const ENTRY = new URL('./stage-worker.ts', import.meta.url);

export class WorkerStage extends ThreadHandle<ToWorker, OutReply> {
  private constructor(readonly spec: StageSpec) {
    super(ENTRY, `stage worker [${spec.firstLayer}, ${spec.endLayer})`, { type: 'close' });
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
    // The Worker needs the spec's shape only: the head weights are already inside the graph bytes.
    const light: StageSpec = { ...spec, exit: spec.exit && { afterLayer: spec.exit.afterLayer } };
    const info = { config: model.config, spec: light, maxSeqLen };
    const opt = {
      device: opts.device,
      threads: opts.threads,
      maxSeqLen,
      allowCpuFallback: opts.allowCpuFallback,
    };
    ws.send({ type: 'init', graph, info, opts: opt }, [graph.buffer as ArrayBuffer]);
    await ws.started();
    return ws;
  }

  /** Queues one forward; the hidden input's buffer is transferred (the caller must not touch it again). */
  run(req: RunRequest): Promise<OutReply> {
    return this.request(
      (id) => ({ type: 'run', id, ...req }),
      req.hidden ? [req.hidden.buffer as ArrayBuffer] : [],
    );
  }

  /** Forgets cached positions >= length (queued behind any run in flight). */
  truncate(length: number): void {
    this.send({ type: 'truncate', length });
  }
}
