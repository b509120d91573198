/**
 * Desired-capacity arithmetic for the GPU worker pool. Pure: no clocks, no I/O.
 *
 * Load is counted in jobs (one sequence each): `backlog` (waiting + prioritized + delayed jobs that are
 * due) plus `running` (BullMQ `active`, which includes the jobs a worker holds while its engine has not
 * admitted them yet). A worker runs up to `maxBatch` sequences in one batched step, so the pool's capacity
 * is workers x maxBatch sequences, and a worker is "at target" when it carries `targetPerWorker` jobs per
 * batch slot, running ones included: the pool needs `ceil(load / (targetPerWorker x maxBatch))` workers.
 * Counting running jobs keeps the pool from shrinking under workers that are busy (they are scale-in
 * protected, so a shrink below the busy count would only terminate each of them the moment it finished,
 * while more work waits).
 */

export interface CapacityInput {
  /** Jobs waiting to start: waiting + prioritized + delayed jobs whose time has come. */
  backlog: number;
  /** Jobs being processed right now (BullMQ `active`). */
  running: number;
  /** Workers in service (ASG lifecycle state InService). Informational; the decision uses `currentDesired`. */
  inService: number;
  /** The group's desired capacity now. */
  currentDesired: number;
  /**
   * Target jobs (running + queued) per batch slot of a worker (1: every slot busy, nothing queued; with
   * `maxBatch` 1, jobs per worker). Must be > 0.
   */
  targetPerWorker: number;
  /** Sequences one worker runs at once (the workers' PPSD_MAX_BATCH): a worker's capacity. Integer >= 1. */
  maxBatch: number;
  /** Floor while there is work, or always when scale-to-zero is off (then at least 1). */
  minWorkers: number;
  /** Ceiling. */
  maxWorkers: number;
  /** When true the pool may go to 0 workers, but only when nothing is queued or running. */
  scaleToZero: boolean;
  /** At most this many workers added per decision (default: unlimited). */
  maxScaleOutStep?: number;
  /** At most this many workers removed per decision (default 1). */
  maxScaleInStep?: number;
  /** Milliseconds since the last scale-in; with `scaleInCooldownMs`, holds capacity while cooling down. */
  msSinceLastScaleIn?: number;
  /** No scale-in sooner than this after the previous one (default 0). */
  scaleInCooldownMs?: number;
}

export type CapacityReason =
  | 'steady'
  | 'scale-out'
  | 'scale-out-step-limited'
  | 'scale-in'
  | 'scale-in-step-limited'
  | 'scale-in-cooldown'
  | 'scale-to-zero'
  | 'wake-from-zero'
  | 'clamped-to-max'
  | 'raised-to-min';

export interface CapacityDecision {
  desired: number;
  /** Workers the load alone calls for, before min/max/step limits. */
  needed: number;
  reason: CapacityReason;
}

function checkCount(name: string, v: number | undefined, optional = false): void {
  if (v === undefined && optional) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got ${String(v)}`);
  }
}

function checkMaxBatch(maxBatch: number): void {
  if (!(Number.isInteger(maxBatch) && maxBatch >= 1)) {
    throw new RangeError(`maxBatch must be an integer >= 1, got ${String(maxBatch)}`);
  }
}

/**
 * The scaling metric: jobs per unit of worker capacity, (backlog + running) / (in-service workers x
 * maxBatch). 1 means every batch slot of every worker is busy and nothing waits.
 */
export function backlogPerWorker(
  backlog: number,
  running: number,
  inService: number,
  maxBatch: number,
): number {
  checkCount('backlog', backlog);
  checkCount('running', running);
  checkCount('inService', inService);
  checkMaxBatch(maxBatch);
  const load = backlog + running;
  // With no worker in service the load is reported as if one worker carried it: the metric stays
  // above the target whenever there is work, so a scale-out (or the wake-from-zero path) triggers.
  return load / (Math.max(inService, 1) * maxBatch);
}

export function desiredCapacity(input: CapacityInput): CapacityDecision {
  const { backlog, running, currentDesired, targetPerWorker, minWorkers, maxWorkers, scaleToZero } = input;
  checkCount('backlog', backlog);
  checkCount('running', running);
  checkCount('inService', input.inService);
  checkCount('currentDesired', currentDesired);
  checkCount('minWorkers', minWorkers);
  checkCount('maxWorkers', maxWorkers);
  checkCount('maxScaleInStep', input.maxScaleInStep, true);
  checkCount('msSinceLastScaleIn', input.msSinceLastScaleIn, true);
  checkCount('scaleInCooldownMs', input.scaleInCooldownMs, true);
  if (input.maxScaleOutStep !== undefined && !(input.maxScaleOutStep >= 1)) {
    throw new RangeError(`maxScaleOutStep must be >= 1, got ${input.maxScaleOutStep}`);
  }
  if (!(Number.isFinite(targetPerWorker) && targetPerWorker > 0)) {
    throw new RangeError(`targetPerWorker must be a positive number, got ${targetPerWorker}`);
  }
  checkMaxBatch(input.maxBatch);
  if (maxWorkers < 1) throw new RangeError(`maxWorkers must be >= 1, got ${maxWorkers}`);
  if (minWorkers > maxWorkers) {
    throw new RangeError(`minWorkers (${minWorkers}) must not exceed maxWorkers (${maxWorkers})`);
  }
  const maxOut = input.maxScaleOutStep ?? Number.POSITIVE_INFINITY;
  const maxIn = input.maxScaleInStep ?? 1;
  if (maxIn < 1) throw new RangeError(`maxScaleInStep must be >= 1, got ${maxIn}`);

  const load = backlog + running;
  // Capacity in sequences: each worker carries targetPerWorker jobs per batch slot.
  const perWorker = targetPerWorker * input.maxBatch;
  // Guard against float noise such as 3 / 0.1 = 30.000000000000004.
  const needed = load === 0 ? 0 : Math.ceil(load / perWorker - 1e-9);
  const floor = scaleToZero && load === 0 ? 0 : Math.max(minWorkers, 1);
  const bounded = Math.min(Math.max(needed, floor), maxWorkers);

  if (currentDesired > maxWorkers) return { desired: maxWorkers, needed, reason: 'clamped-to-max' };
  if (currentDesired < floor) {
    if (currentDesired === 0) {
      const desired = Math.min(bounded, Math.max(1, maxOut));
      return { desired, needed, reason: 'wake-from-zero' };
    }
    const desired = Math.min(bounded, currentDesired + maxOut);
    return { desired: Math.max(desired, Math.min(floor, maxWorkers)), needed, reason: 'raised-to-min' };
  }
  if (bounded > currentDesired) {
    const limited = currentDesired + maxOut;
    if (bounded > limited) return { desired: limited, needed, reason: 'scale-out-step-limited' };
    return { desired: bounded, needed, reason: 'scale-out' };
  }
  if (bounded < currentDesired) {
    const cooldown = input.scaleInCooldownMs ?? 0;
    if (cooldown > 0 && input.msSinceLastScaleIn !== undefined && input.msSinceLastScaleIn < cooldown) {
      return { desired: currentDesired, needed, reason: 'scale-in-cooldown' };
    }
    const limited = currentDesired - maxIn;
    if (bounded < limited) return { desired: limited, needed, reason: 'scale-in-step-limited' };
    return { desired: bounded, needed, reason: bounded === 0 ? 'scale-to-zero' : 'scale-in' };
  }
  return { desired: currentDesired, needed, reason: 'steady' };
}
