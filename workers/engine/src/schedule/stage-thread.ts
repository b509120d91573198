/**
 * The engine's handle on one batched pipeline stage running in its own thread (stage-thread-worker.ts).
 * It is a StepHost: a StepLoop of its own sends it steps, so the stages of a pipeline run their steps
 * at the same time, each on its own core, while each keeps batching every sequence that reached it.
 */
import { buildStageGraph } from '../graph/llama-graph';
import { consistentRows } from '../graph/weights';
import { type LlamaModel, stageMatrices } from '../model/llama';
import type { StageOutput, StageSpec } from '../model/stage';
import { laneBuckets } from '../runtime/batched-stage';
import type { OrtStageOptions } from '../runtime/ort-stage';
import { ThreadHandle } from '../thread-handle';
import type { StageThreadItem, StageThreadOut, ToStageThread } from './stage-thread-protocol';
import type { StepHost } from './step-loop';

/** A step's output for one sequence, with the time the thread spent on the whole step. */
export interface ThreadStageOutput extends StageOutput {
  busyMs: number;
}

export type StageThreadOptions = Pick<
  OrtStageOptions,
  'device' | 'threads' | 'maxSeqLen' | 'accuracyLevel' | 'allowCpuFallback'
>;

const ENTRY = new URL('./stage-thread-worker.ts', import.meta.url);

export class StageThread
  extends ThreadHandle<ToStageThread, StageThreadOut>
  implements StepHost<StageThreadItem, ThreadStageOutput>
{
  private constructor(
    readonly spec: StageSpec,
    readonly consistentRows: number | undefined,
  ) {
    super(ENTRY, `stage thread [${spec.firstLayer}, ${spec.endLayer})`, { type: 'close' });
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
    for (const lanes of laneBuckets(maxLanes)) {
      let bytes = buildStageGraph(model, spec, { maxSeqLen, accuracyLevel: opts.accuracyLevel, lanes });
      if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength) bytes = bytes.slice();
      st.send({ type: 'graph', lanes, bytes }, [bytes.buffer as ArrayBuffer]);
    }
    // the thread needs the spec's shape only: the head's weights are inside the graphs
    const light: StageSpec = { ...spec, exit: spec.exit && { afterLayer: spec.exit.afterLayer } };
    st.send({
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
    await st.started();
    return st;
  }

  /** A sequence's cache of `rows` positions in this stage's layers. */
  openSequence(seq: number, rows: number): void {
    this.send({ type: 'open', seq, rows });
  }

  /** Frees a sequence's cache (after every step it is in has been sent). */
  release(seq: number): void {
    this.send({ type: 'release', seq });
  }

  /** One batched step over `items` (each sequence at most once). */
  async run(items: StageThreadItem[]): Promise<ThreadStageOutput[]> {
    const reply = await this.request((id) => ({ type: 'step', id, items }));
    return reply.outs.map((o) => ({ ...o, busyMs: reply.busyMs }));
  }
}
