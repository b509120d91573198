/**
 * Messages between the pipeline controller (main thread) and a stage Worker (stage-worker.ts).
 * One `run` message and one `out` reply per stage per tick; float buffers travel by transfer.
 */
import type { OrtStageOptions, StageGraphInfo } from '../runtime';

export interface InitMessage {
  type: 'init';
  /** The stage's ONNX model (its buffer is transferred). */
  graph: Uint8Array;
  info: StageGraphInfo;
  opts: Pick<OrtStageOptions, 'device' | 'threads' | 'maxSeqLen' | 'allowCpuFallback'>;
}

export interface RunMessage {
  type: 'run';
  id: number;
  /** Forget cached positions >= truncate before running (the rejection flush rides on the next run). */
  truncate?: number;
  /** Cache length the controller expects before the run: catches any desynchronised cache at once. */
  position: number;
  tokens?: Int32Array; // first stage
  hidden?: Float32Array; // other stages (transferred)
  logitRows?: number;
}

/** Forget cached positions >= length without running (used when a generation ends or resets). */
export interface TruncateMessage {
  type: 'truncate';
  length: number;
}

/** Finish whatever is queued (never interrupting a run), release the session and exit. */
export interface CloseMessage {
  type: 'close';
}

export type ToWorker = InitMessage | RunMessage | TruncateMessage | CloseMessage;

export interface ReadyReply {
  type: 'ready';
  device: string;
}

export interface OutReply {
  type: 'out';
  id: number;
  hidden?: Float32Array;
  logits?: Float32Array;
  exitLogits?: Float32Array;
  exitHidden?: Float32Array;
  /** Time inside the stage's forward (the session run plus its feeds and cache append). */
  busyMs: number;
}

export interface ErrorReply {
  type: 'error';
  /** The failed run's id; absent for init failures. */
  id?: number;
  message: string;
}

export interface ClosedReply {
  type: 'closed';
}

export type FromWorker = ReadyReply | OutReply | ErrorReply | ClosedReply;

/** The distinct ArrayBuffers under some typed arrays (a transfer list must not repeat one). */
export function transferList(...arrays: (ArrayBufferView | undefined)[]): ArrayBuffer[] {
  const set = new Set<ArrayBuffer>();
  for (const a of arrays) if (a && a.buffer instanceof ArrayBuffer) set.add(a.buffer);
  return [...set];
}
