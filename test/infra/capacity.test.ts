import { backlogPerWorker, type CapacityInput, desiredCapacity } from '@ppsd/autoscaler';
import { describe, expect, it } from 'vitest';

const base: CapacityInput = {
  backlog: 0,
  running: 0,
  inService: 0,
  currentDesired: 0,
  targetPerWorker: 1,
  maxBatch: 1,
  minWorkers: 0,
  maxWorkers: 10,
  scaleToZero: true,
};
const decide = (over: Partial<CapacityInput>) => desiredCapacity({ ...base, ...over });

describe('backlogPerWorker', () => {
  it('divides queued + running jobs by in-service workers', () => {
    expect(backlogPerWorker(6, 2, 4, 1)).toBe(2);
    expect(backlogPerWorker(1, 0, 2, 1)).toBe(0.5);
    expect(backlogPerWorker(0, 0, 3, 1)).toBe(0);
  });
  it('reports the whole load when no worker is in service, so the metric breaches the target', () => {
    expect(backlogPerWorker(5, 0, 0, 1)).toBe(5);
    expect(backlogPerWorker(0, 0, 0, 1)).toBe(0);
  });
  it('rejects negative or fractional counts', () => {
    expect(() => backlogPerWorker(-1, 0, 1, 1)).toThrow(RangeError);
    expect(() => backlogPerWorker(1.5, 0, 1, 1)).toThrow(/backlog/);
    expect(() => backlogPerWorker(1, 0, Number.NaN, 1)).toThrow(/inService/);
  });
});

describe('capacity in sequences: workers x maxBatch', () => {
  it('divides the load by in-service workers x maxBatch', () => {
    expect(backlogPerWorker(30, 18, 3, 16)).toBe(1);
    expect(backlogPerWorker(8, 0, 1, 16)).toBe(0.5);
    // no worker in service: as if one worker (one batch) carried the whole load
    expect(backlogPerWorker(40, 0, 0, 16)).toBe(2.5);
    expect(() => backlogPerWorker(1, 0, 1, 0)).toThrow(/maxBatch/);
    expect(() => backlogPerWorker(1, 0, 1, 1.5)).toThrow(/maxBatch/);
  });

  it('needs ceil(load / (target x maxBatch)) workers, not one per job', () => {
    // 40 jobs, 16 sequences per worker: 3 workers (the per-job formula would ask for 40)
    expect(decide({ backlog: 40, maxBatch: 16, maxWorkers: 100 })).toEqual({
      desired: 3,
      needed: 3,
      reason: 'wake-from-zero',
    });
    expect(decide({ backlog: 20, running: 12, maxBatch: 16, currentDesired: 1, inService: 1 })).toMatchObject(
      {
        desired: 2,
        needed: 2,
        reason: 'scale-out',
      },
    );
    // a full batch on one worker is steady, one more job scales out
    expect(decide({ running: 16, maxBatch: 16, currentDesired: 1, inService: 1 })).toMatchObject({
      desired: 1,
      reason: 'steady',
    });
    expect(decide({ backlog: 1, running: 16, maxBatch: 16, currentDesired: 1 })).toMatchObject({
      desired: 2,
      reason: 'scale-out',
    });
    // target 2 jobs per slot: 64 jobs on 16-sequence workers need 2
    expect(decide({ backlog: 64, maxBatch: 16, targetPerWorker: 2, currentDesired: 2 })).toMatchObject({
      desired: 2,
      needed: 2,
      reason: 'steady',
    });
  });

  it('scales a batch-sized pool in when the load fits in fewer batches', () => {
    expect(decide({ running: 10, maxBatch: 16, currentDesired: 3, inService: 3 })).toMatchObject({
      desired: 2,
      needed: 1,
      reason: 'scale-in-step-limited',
    });
    expect(() => decide({ maxBatch: 0 })).toThrow(/maxBatch/);
  });
});

describe('desiredCapacity', () => {
  it('stays at zero when idle and scale-to-zero is on', () => {
    expect(decide({})).toEqual({ desired: 0, needed: 0, reason: 'steady' });
  });

  it('wakes from zero to what the backlog needs', () => {
    expect(decide({ backlog: 3 })).toEqual({ desired: 3, needed: 3, reason: 'wake-from-zero' });
    expect(decide({ backlog: 3, targetPerWorker: 2 })).toMatchObject({
      desired: 2,
      reason: 'wake-from-zero',
    });
  });

  it('wakes from zero to at least the minimum, limited by the scale-out step', () => {
    expect(decide({ backlog: 1, minWorkers: 2 })).toMatchObject({ desired: 2, needed: 1 });
    expect(decide({ backlog: 9, maxScaleOutStep: 2 })).toMatchObject({
      desired: 2,
      reason: 'wake-from-zero',
    });
  });

  it('counts running jobs as load (busy workers are not scaled away)', () => {
    expect(decide({ running: 4, inService: 4, currentDesired: 4 })).toMatchObject({
      desired: 4,
      reason: 'steady',
    });
    expect(decide({ backlog: 2, running: 4, inService: 4, currentDesired: 4 })).toMatchObject({
      desired: 6,
      reason: 'scale-out',
    });
  });

  it('rounds up fractional needs and is not fooled by float noise', () => {
    expect(decide({ backlog: 5, targetPerWorker: 2, currentDesired: 1 }).desired).toBe(3);
    expect(decide({ backlog: 3, targetPerWorker: 0.1, currentDesired: 1, maxWorkers: 100 }).needed).toBe(30);
    expect(decide({ backlog: 6, targetPerWorker: 3, currentDesired: 2 })).toMatchObject({
      desired: 2,
      reason: 'steady',
    });
  });

  it('never exceeds the maximum', () => {
    expect(decide({ backlog: 100, currentDesired: 2 })).toMatchObject({
      desired: 10,
      needed: 100,
      reason: 'scale-out',
    });
    expect(decide({ backlog: 100, currentDesired: 0 })).toMatchObject({ desired: 10 });
  });

  it('clamps a group above the maximum (max lowered) at once', () => {
    expect(decide({ backlog: 50, currentDesired: 14 })).toMatchObject({
      desired: 10,
      reason: 'clamped-to-max',
    });
  });

  it('limits scale-out to the step size', () => {
    expect(decide({ backlog: 10, currentDesired: 2, maxScaleOutStep: 3 })).toMatchObject({
      desired: 5,
      reason: 'scale-out-step-limited',
    });
  });

  it('scales in one worker at a time by default', () => {
    expect(decide({ backlog: 1, currentDesired: 5, inService: 5 })).toMatchObject({
      desired: 4,
      needed: 1,
      reason: 'scale-in-step-limited',
    });
    expect(decide({ backlog: 1, currentDesired: 5, maxScaleInStep: 10 })).toMatchObject({
      desired: 1,
      reason: 'scale-in',
    });
  });

  it('scales to zero only when nothing is queued or running', () => {
    expect(decide({ currentDesired: 1, inService: 1 })).toMatchObject({
      desired: 0,
      reason: 'scale-to-zero',
    });
    expect(decide({ running: 1, currentDesired: 1, inService: 1 })).toMatchObject({
      desired: 1,
      reason: 'steady',
    });
    expect(decide({ backlog: 1, currentDesired: 1, minWorkers: 0 })).toMatchObject({ desired: 1 });
  });

  it('keeps at least one worker (and the minimum) when scale-to-zero is off', () => {
    expect(decide({ scaleToZero: false, currentDesired: 1 })).toMatchObject({ desired: 1, reason: 'steady' });
    expect(decide({ scaleToZero: false, minWorkers: 0, currentDesired: 3, maxScaleInStep: 5 })).toMatchObject(
      {
        desired: 1,
      },
    );
    expect(decide({ scaleToZero: false, minWorkers: 2, currentDesired: 4, maxScaleInStep: 5 })).toMatchObject(
      {
        desired: 2,
      },
    );
  });

  it('raises a group below its floor regardless of the step limit', () => {
    expect(
      decide({ scaleToZero: false, minWorkers: 3, currentDesired: 1, maxScaleOutStep: 1 }),
    ).toMatchObject({
      desired: 3,
      reason: 'raised-to-min',
    });
  });

  it('holds capacity during the scale-in cooldown, then scales in', () => {
    const over = { currentDesired: 3, scaleInCooldownMs: 300_000 };
    expect(decide({ ...over, msSinceLastScaleIn: 10_000 })).toMatchObject({
      desired: 3,
      reason: 'scale-in-cooldown',
    });
    expect(decide({ ...over, msSinceLastScaleIn: 300_000 })).toMatchObject({ desired: 2 });
    expect(decide({ ...over })).toMatchObject({ desired: 2 });
  });

  it('does not apply the scale-in cooldown to scale-out', () => {
    expect(
      decide({ backlog: 5, currentDesired: 3, scaleInCooldownMs: 300_000, msSinceLastScaleIn: 0 }),
    ).toMatchObject({ desired: 5, reason: 'scale-out' });
  });

  it('is monotonic in the backlog', () => {
    for (const currentDesired of [0, 1, 4, 10]) {
      let prev = -1;
      for (let backlog = 0; backlog <= 40; backlog++) {
        const { desired } = decide({ backlog, currentDesired, maxScaleInStep: 100 });
        expect(desired).toBeGreaterThanOrEqual(prev);
        expect(desired).toBeLessThanOrEqual(10);
        prev = desired;
      }
    }
  });

  it('converges: applying its own answer again is steady', () => {
    for (const backlog of [0, 1, 3, 7, 25]) {
      for (const running of [0, 2]) {
        let current = 0;
        for (let i = 0; i < 20; i++) current = decide({ backlog, running, currentDesired: current }).desired;
        expect(decide({ backlog, running, currentDesired: current }).reason).toBe('steady');
        expect(current).toBe(Math.min(10, backlog + running));
      }
    }
  });

  it('rejects invalid input with a clear error', () => {
    expect(() => decide({ targetPerWorker: 0 })).toThrow(/targetPerWorker/);
    expect(() => decide({ targetPerWorker: Number.POSITIVE_INFINITY })).toThrow(/targetPerWorker/);
    expect(() => decide({ minWorkers: 5, maxWorkers: 2 })).toThrow(/minWorkers/);
    expect(() => decide({ maxWorkers: 0 })).toThrow(/maxWorkers/);
    expect(() => decide({ backlog: -2 })).toThrow(/backlog/);
    expect(() => decide({ currentDesired: 1.5 })).toThrow(/currentDesired/);
    expect(() => decide({ maxScaleInStep: 0 })).toThrow(/maxScaleInStep/);
    expect(() => decide({ maxScaleOutStep: 0 })).toThrow(/maxScaleOutStep/);
  });
});
