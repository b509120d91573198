/**
 * Ideal speedups (design note, "The ideal speedup") and efficiency = measured / ideal.
 */

/** PPSD / SPD: k / (alpha + (1 - alpha) k): an accepted token costs one tick, a rejection the k-tick refill. */
export function pipelineSpeedup(alpha: number, k: number): number {
  checkAlpha(alpha);
  if (!(k >= 1)) throw new RangeError(`k must be >= 1, got ${k}`);
  return k / (alpha + (1 - alpha) * k);
}

/**
 * The same for an uneven plan: AR costs N layer-times per token on one device; a pipeline tick costs
 * the deepest stage's layers. Equals `pipelineSpeedup` when the stages are equal.
 */
export function planSpeedup(alpha: number, boundaries: number[]): number {
  const k = boundaries.length - 1;
  const N = boundaries[k];
  let deepest = 0;
  for (let j = 0; j < k; j++) deepest = Math.max(deepest, boundaries[j + 1] - boundaries[j]);
  return (N / deepest / k) * pipelineSpeedup(alpha, k);
}

/**
 * The same from the cost model (pipeline.ts stageMacs): AR costs a full forward per token, a tick the
 * costliest stage (heads included): (forward / (k x costliest)) x k / (alpha + (1 - alpha) k).
 */
export function costPlanSpeedup(alpha: number, stageMacs: number[], forwardMacs: number): number {
  const k = stageMacs.length;
  return (forwardMacs / Math.max(...stageMacs) / k) * pipelineSpeedup(alpha, k);
}

/** Expected tokens per draft-then-verify block of gamma drafts: (1 - alpha^(gamma+1)) / (1 - alpha). */
export function expectedBlockTokens(alpha: number, gamma: number): number {
  checkAlpha(alpha);
  return alpha === 1 ? gamma + 1 : (1 - alpha ** (gamma + 1)) / (1 - alpha);
}

/**
 * EESD: [(1 - alpha^(gamma+1)) / (1 - alpha)] / [gamma c + (1 - c)], c = E / N (the first E layers'
 * KV entries are reused by the verify pass, so it only runs the last N - E layers).
 */
export function eesdSpeedup(alpha: number, gamma: number, c: number): number {
  return expectedBlockTokens(alpha, gamma) / (gamma * c + (1 - c));
}

/**
 * Draft & Verify: the draft is the whole model minus its skipped sub-layers (relative cost c), the
 * verify pass is a full forward: [(1 - alpha^(gamma+1)) / (1 - alpha)] / [gamma c + 1].
 */
export function dvSpeedup(alpha: number, gamma: number, c: number): number {
  return expectedBlockTokens(alpha, gamma) / (gamma * c + 1);
}

export const efficiency = (measuredSpeedup: number, idealSpeedup: number): number =>
  idealSpeedup > 0 ? measuredSpeedup / idealSpeedup : Number.NaN;

function checkAlpha(alpha: number): void {
  if (!(alpha >= 0 && alpha <= 1)) throw new RangeError(`alpha must be in [0, 1], got ${alpha}`);
}
