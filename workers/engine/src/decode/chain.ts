import type { Stage, StageOutput } from '../model/stage';

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

/** Forgets every cached position >= length in every stage. */
export function truncateChain(stages: Stage[], length: number): void {
  for (const stage of stages) stage.truncate(length);
}
