import type { Stage, StageInput, StageOutput } from '../model/stage';

/**
 * Runs a block of new tokens through stages in order (stage i's hidden states feed stage i+1) and
 * returns the last stage's output. Every stage appends the block's positions to its own cache.
 */
export async function forwardChain(
  stages: Stage[],
  tokens: Int32Array,
  logitRows?: number,
): Promise<StageOutput> {
  let out = await stages[0].forward({ tokens, logitRows });
  for (let i = 1; i < stages.length; i++) {
    out = await stages[i].forward({ hidden: out.hidden, logitRows });
  }
  return out;
}

/**
 * One stage forward over a block of T rows, split into consecutive forwards of at most
 * `stage.consistentRows` rows so that every row computes exactly as in single-token decoding. Returns
 * what one forward would: hidden states of all T rows, logits (and exit outputs) of the last `logitRows`.
 */
export async function forwardRows(stage: Stage, input: StageInput, T: number): Promise<StageOutput> {
  const max = stage.consistentRows;
  if (!max || T <= max) return stage.forward(input);
  const R = input.logitRows ?? T;
  const width = input.hidden ? input.hidden.length / T : 0;
  const got: Record<'hidden' | 'exitHidden' | 'logits' | 'exitLogits', Float32Array[]> = {
    hidden: [],
    exitHidden: [],
    logits: [],
    exitLogits: [],
  };
  for (let at = 0; at < T; at += max) {
    const n = Math.min(max, T - at);
    const wanted = Math.min(n, Math.max(0, at + n - (T - R))); // this chunk's rows among the last R
    const rows = input.tokens
      ? { tokens: input.tokens.subarray(at, at + n) }
      : { hidden: input.hidden!.subarray(at * width, (at + n) * width) };
    const out = await stage.forward({ ...rows, logitRows: Math.max(wanted, 1) });
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

/** forwardChain for verification blocks: every stage's forward split by forwardRows. */
export async function verifyChain(
  stages: Stage[],
  tokens: Int32Array,
  logitRows?: number,
): Promise<StageOutput> {
  const T = tokens.length;
  let out = await forwardRows(stages[0], { tokens, logitRows }, T);
  for (let i = 1; i < stages.length; i++)
    out = await forwardRows(stages[i], { hidden: out.hidden, logitRows }, T);
  return out;
}

/** Forgets every cached position >= length in every stage. */
export function truncateChain(stages: Stage[], length: number): void {
  for (const stage of stages) stage.truncate(length);
}
