import { forwardInChunks, type Stage, type StageInput, type StageOutput } from '../model/stage';

/**
 * Runs a block of new tokens through stages in order (stage i's hidden states feed stage i+1) and
 * returns the last stage's output. Every stage appends the block's positions to its own cache.
 */
export async function forwardChain(
  stages: Stage[],
  tokens: Int32Array,
  logitRows?: number,
  forward: (stage: Stage, input: StageInput) => Promise<StageOutput> = (s, input) => s.forward(input),
): Promise<StageOutput> {
  let out = await forward(stages[0], { tokens, logitRows });
  for (let i = 1; i < stages.length; i++) {
    out = await forward(stages[i], { hidden: out.hidden, logitRows });
  }
  return out;
}

/**
 * One stage forward over a block of T rows, split into consecutive forwards of at most
 * `stage.consistentRows` rows so that every row computes exactly as in single-token decoding.
 */
export function forwardRows(stage: Stage, input: StageInput, T: number): Promise<StageOutput> {
  return forwardInChunks((i) => stage.forward(i), input, T, stage.consistentRows);
}

/** forwardChain for verification blocks: every stage's forward split by forwardRows. */
export function verifyChain(stages: Stage[], tokens: Int32Array, logitRows?: number): Promise<StageOutput> {
  return forwardChain(stages, tokens, logitRows, (s, input) => forwardRows(s, input, tokens.length));
}

/** Forgets every cached position >= length in every stage. */
export function truncateChain(stages: Stage[], length: number): void {
  for (const stage of stages) stage.truncate(length);
}
