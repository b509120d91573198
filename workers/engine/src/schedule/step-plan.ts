/**
 * Planning one step of the batched loop (pure; step-loop.ts executes what this picks).
 *
 * A step runs one batched forward of one stage graph. It serves the stage of the oldest waiting forward
 * (so no sequence waits behind a stage it does not use), takes that stage's short forwards first (decode
 * rows and verify blocks: the inter-token latency of running sequences), then prompt chunks while the
 * step's row budget lasts, and never more sequences than the graph has lanes. The oldest forward always
 * goes, whatever its size, so a long prompt chunk can never starve.
 */

/** What the planner sees of a waiting forward. */
export interface PlannedForward<Host> {
  host: Host;
  rows: number;
}

export interface StepBudget {
  /** Most sequences one step runs (the graph's lanes, the engine's maxBatch). */
  maxLanes: number;
  /** Most rows one step runs once short forwards are in (the prefill budget per step). */
  maxRows: number;
  /** Forwards of at most this many rows count as short (decode / verify). */
  shortRows: number;
}

/** Indexes (into `pending`, arrival order) of the forwards the next step runs; empty when none wait. */
export function planStep<Host>(pending: readonly PlannedForward<Host>[], budget: StepBudget): number[] {
  if (pending.length === 0) return [];
  const host = pending[0].host;
  const same = pending.map((p, i) => ({ p, i })).filter(({ p }) => p.host === host);
  const picked: number[] = [same[0].i];
  let rows = same[0].p.rows;
  for (const { p, i } of same.slice(1)) {
    if (picked.length >= budget.maxLanes) break;
    if (p.rows <= budget.shortRows) {
      picked.push(i);
      rows += p.rows;
    }
  }
  for (const { p, i } of same.slice(1)) {
    if (picked.length >= budget.maxLanes) break;
    if (p.rows > budget.shortRows && rows + p.rows <= budget.maxRows) {
      picked.push(i);
      rows += p.rows;
    }
  }
  return picked.sort((a, b) => a - b);
}
