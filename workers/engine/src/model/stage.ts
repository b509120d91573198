import type { ExitHead, SkipSet } from './llama';

/**
 * A stage: a contiguous range of layers [firstLayer, endLayer) with its own KV cache.
 * The first stage (firstLayer = 0) takes token ids; the others take the previous stage's hidden states.
 * The last stage (endLayer = nLayers) returns logits; the others return hidden states.
 * Positions are implicit: a forward of T new rows covers positions length .. length+T-1 and appends
 * their K/V to the cache. `truncate(n)` forgets every position >= n in O(1).
 */
export interface StageSpec {
  firstLayer: number;
  endLayer: number;
  /** Also expose exit logits after this layer (must lie inside the stage). */
  exit?: ExitHead;
  /** Leave these sub-layers out (layer-skipping draft); their cache slots are left untouched. */
  skip?: SkipSet;
}

export interface StageInput {
  tokens?: Int32Array; // [T] for the first stage
  hidden?: Float32Array; // [T, dim] otherwise
  /** Compute logits (and exit logits) only for the last `logitRows` rows; default all T. */
  logitRows?: number;
}

export interface StageOutput {
  rows: number; // T
  hidden?: Float32Array; // [T, dim] when not the last stage
  logits?: Float32Array; // [logitRows, vocab] from the last stage
  exitLogits?: Float32Array; // [logitRows, vocab] when the stage has an exit head
  exitHidden?: Float32Array; // [T, dim] hidden state at the exit layer (for SPD features)
}

export interface Stage {
  readonly spec: StageSpec;
  /**
   * The largest block whose rows come out exactly as single-token forwards would (undefined: any).
   * Speculative decoders verify in blocks of at most this many rows (decode/chain.ts forwardRows).
   */
  readonly consistentRows?: number;
  /** Number of cached positions. */
  readonly length: number;
  forward(input: StageInput): Promise<StageOutput>;
  truncate(length: number): void;
  release(): Promise<void>;
}
