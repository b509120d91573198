/**
 * Messages between the engine and a batched stage thread (stage-thread-worker.ts). The thread owns the
 * stage's sessions and every sequence's KV cache of the stage's layers; the engine names sequences by id.
 * Messages are handled in order, so an `open` posted before a `step` is always there for it.
 */
import type { LlamaConfig } from '../model/llama';
import type { StageOutput, StageSpec } from '../model/stage';
import type { OrtStageOptions } from '../runtime/ort-stage';
import type { ThreadReply } from '../thread-handle';

export interface StageThreadInit {
  type: 'init';
  config: LlamaConfig;
  /** The spec's shape (its head's weights are inside the graphs). */
  spec: StageSpec;
  maxLanes: number;
  consistentRows?: number;
  opts: Pick<OrtStageOptions, 'device' | 'threads' | 'maxSeqLen' | 'allowCpuFallback'>;
}

/** The graph of one lane bucket (its buffer transferred); every bucket's arrives before `init`. */
export interface StageThreadGraph {
  type: 'graph';
  lanes: number;
  bytes: Uint8Array;
}

/** A sequence joins: a cache of `rows` positions for it. */
export interface StageThreadOpen {
  type: 'open';
  seq: number;
  rows: number;
}

/** One sequence's rows in a step; `truncate` (a rejection's flush) applies before they run. */
export interface StageThreadItem {
  seq: number;
  truncate?: number;
  tokens?: Int32Array;
  hidden?: Float32Array;
  logitRows?: number;
}

export interface StageThreadStep {
  type: 'step';
  id: number;
  items: StageThreadItem[];
}

export interface StageThreadRelease {
  type: 'release';
  seq: number;
}

export interface StageThreadClose {
  type: 'close';
}

export type ToStageThread =
  | StageThreadGraph
  | StageThreadInit
  | StageThreadOpen
  | StageThreadStep
  | StageThreadRelease
  | StageThreadClose;

/** A step's outputs, one per item in order, and the time the thread spent on the step. */
export interface StageThreadOut {
  type: 'out';
  id: number;
  outs: StageOutput[];
  busyMs: number;
}

export type FromStageThread = ThreadReply<StageThreadOut>;
