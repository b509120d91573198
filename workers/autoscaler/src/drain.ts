import { setTimeout as sleep } from 'node:timers/promises';
import {
  CompleteLifecycleActionCommand,
  RecordLifecycleActionHeartbeatCommand,
} from '@aws-sdk/client-auto-scaling';
import { type AwsClientLike, errorMessage, type Logger, silentLogger } from './log';
import type { WorkerStopper } from './stop';

export interface DrainWatcherOptions {
  imds: { targetLifecycleState(): Promise<string | undefined>; instanceId(): Promise<string> };
  autoscaling: AwsClientLike;
  asgName: string;
  /** The termination lifecycle hook (autoscaling:EC2_INSTANCE_TERMINATING) that holds the instance. */
  hookName: string;
  /** Stops the worker service and resolves once it exited (it drains on SIGTERM). */
  stopWorker: WorkerStopper;
  /** How often IMDS is polled (default 5 s). */
  pollIntervalMs?: number;
  /** Lifecycle heartbeats while the worker drains (default 60 s); keeps the hook from timing out. */
  heartbeatIntervalMs?: number;
  /** Attempts at CompleteLifecycleAction (default 5, 2 s apart). */
  completeAttempts?: number;
  retryDelayMs?: number;
  signal?: AbortSignal;
  logger?: Logger;
}

export type DrainOutcome = 'drained' | 'aborted';

/** States that mean "this instance is on its way out of service". */
export function isTerminating(state: string | undefined): boolean {
  return state === 'Terminated';
}

/**
 * Watches the instance's target lifecycle state. When it turns `Terminated` (the group is scaling in
 * or replacing this instance and the termination hook holds it in Terminating:Wait), stops the worker
 * (which stops taking jobs, finishes or hands back those in flight, and exits), then completes the
 * lifecycle action so the termination proceeds without waiting for the hook's timeout.
 */
export async function runDrainWatcher(opts: DrainWatcherOptions): Promise<DrainOutcome> {
  const log = opts.logger ?? silentLogger;
  const poll = opts.pollIntervalMs ?? 5_000;
  const heartbeatEvery = opts.heartbeatIntervalMs ?? 60_000;
  const attempts = opts.completeAttempts ?? 5;
  const retryDelay = opts.retryDelayMs ?? 2_000;
  const signal = opts.signal;

  let lastState: string | undefined;
  while (!signal?.aborted) {
    let state: string | undefined;
    try {
      state = await opts.imds.targetLifecycleState();
    } catch (err) {
      log.warn('reading target lifecycle state failed', { error: errorMessage(err) });
    }
    if (state !== lastState && state !== undefined) {
      log.info('target lifecycle state', { state });
      lastState = state;
    }
    if (isTerminating(state)) return drain(opts, log, heartbeatEvery, attempts, retryDelay);
    try {
      await sleep(poll, undefined, { signal });
    } catch {
      break;
    }
  }
  return 'aborted';
}

async function drain(
  opts: DrainWatcherOptions,
  log: Logger,
  heartbeatEvery: number,
  attempts: number,
  retryDelay: number,
): Promise<DrainOutcome> {
  const instanceId = await opts.imds.instanceId();
  const action = {
    AutoScalingGroupName: opts.asgName,
    LifecycleHookName: opts.hookName,
    InstanceId: instanceId,
  };
  log.info('termination requested: draining worker', { instanceId, hook: opts.hookName });
  const started = Date.now();
  const heartbeat = setInterval(() => {
    opts.autoscaling
      .send(new RecordLifecycleActionHeartbeatCommand(action))
      .catch((err: unknown) => log.warn('lifecycle heartbeat failed', { error: errorMessage(err) }));
  }, heartbeatEvery);
  try {
    await opts.stopWorker();
    log.info('worker stopped', { instanceId, drainMs: Date.now() - started });
  } catch (err) {
    // Terminating anyway is right: the jobs the worker could not finish are retried elsewhere.
    log.error('stopping the worker failed; completing the lifecycle action anyway', {
      error: errorMessage(err),
    });
  } finally {
    clearInterval(heartbeat);
  }
  for (let i = 1; ; i++) {
    try {
      await opts.autoscaling.send(
        new CompleteLifecycleActionCommand({ ...action, LifecycleActionResult: 'CONTINUE' }),
      );
      log.info('lifecycle action completed', { instanceId });
      return 'drained';
    } catch (err) {
      log.warn('CompleteLifecycleAction failed', { try: i, error: errorMessage(err) });
      // After the last attempt the hook's heartbeat timeout ends the wait (default result CONTINUE).
      if (i >= attempts) throw err;
      await sleep(retryDelay);
    }
  }
}
