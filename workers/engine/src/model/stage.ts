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

/**
 * A forward over a block of T rows as consecutive forwards of at most `maxRows` rows (undefined: one
 * forward). Returns what one forward would: hidden states of all T rows, logits and exit outputs of the
 * last `logitRows` rows. Each chunk appends its rows to the cache before the next one runs, so the result
 * is the same computation split at chunk boundaries.
 */
export async function forwardInChunks(
  forward: (input: StageInput) => Promise<StageOutput>,
  input: StageInput,
  T: number,
  maxRows: number | undefined,
): Promise<StageOutput> {
  if (!maxRows || T <= maxRows) return forward(input);
  const R = input.logitRows ?? T;
  const width = input.hidden ? input.hidden.length / T : 0;
  const got: Record<'hidden' | 'exitHidden' | 'logits' | 'exitLogits', Float32Array[]> = {
    hidden: [],
    exitHidden: [],
    logits: [],
    exitLogits: [],
  };
  for (let at = 0; at < T; at += maxRows) {
    const n = Math.min(maxRows, T - at);
    const wanted = Math.min(n, Math.max(0, at + n - (T - R))); // this chunk's rows among the last R
    const rows = input.tokens
      ? { tokens: input.tokens.subarray(at, at + n) }
      : { hidden: input.hidden!.subarray(at * width, (at + n) * width) };
    const out = await forward({ ...rows, logitRows: Math.max(wanted, 1) });
    if (out.hidden) got.hidden.push(out.hidden);
    if (out.exitHidden) got.exitHidden.push(out.exitHidden);
    if (wanted > 0 && out.logits) got.logits.push(out.logits);
    if (wanted > 0 && out.exitLogits) got.exitLogits.push(out.exitLogits);
  }
  return {
    rows: T,
    hidden: concatRows(got.hidden),
    exitHidden: concatRows(got.exitHidden),
    logits: concatRows(got.logits),
    exitLogits: concatRows(got.exitLogits),
  };
}

function concatRows(parts: Float32Array[]): Float32Array | undefined {
  if (parts.length === 0) return undefined;
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
