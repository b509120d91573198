/**
 * SIGTERM (and SIGINT) drain: mark the worker not ready, stop taking jobs and wait for the ones in flight
 * (`worker.close()`), never interrupting an engine run; past the drain deadline the in-flight jobs are
 * aborted at the next decoding step and handed back to the queue. Then release the engine and exit 0.
 * A second signal while draining is reported and otherwise ignored (the drain is already under way).
 */

export interface DrainDeps {
  log: (msg: string) => void;
  timeoutMs: number;
  /** Steps, run in order; each is awaited and its failure logged, never skipping the later ones. */
  markNotReady: () => Promise<void>;
  stopTakingJobs: () => Promise<void>;
  abortInFlight: (why: string) => number;
  releaseEngine: () => Promise<void>;
  closeConnections: () => Promise<void>;
  exit?: (code: number) => void;
}

export interface Drain {
  readonly draining: boolean;
  readonly handingBack: boolean;
  run(reason: string): Promise<void>;
}

export function createDrain(deps: DrainDeps): Drain {
  let draining = false;
  let handingBack = false;
  let running: Promise<void> | null = null;
  const step = async (name: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
    } catch (err) {
      deps.log(`drain: ${name} failed: ${(err as Error).message}`);
    }
  };
  const drain: Drain = {
    get draining() {
      return draining;
    },
    get handingBack() {
      return handingBack;
    },
    run(reason) {
      if (running) {
        deps.log(`${reason}: already draining`);
        return running;
      }
      draining = true;
      deps.log(
        `${reason}: draining (no new jobs; waiting up to ${Math.round(deps.timeoutMs / 1000)} s for jobs in flight)`,
      );
      running = (async () => {
        const timer = setTimeout(() => {
          handingBack = true;
          const n = deps.abortInFlight('drain deadline');
          deps.log(`drain deadline passed: handing ${n} job(s) back to the queue`);
        }, deps.timeoutMs);
        await step('mark not ready', deps.markNotReady);
        await step('stop taking jobs', deps.stopTakingJobs);
        clearTimeout(timer);
        await step('release engine', deps.releaseEngine);
        await step('close connections', deps.closeConnections);
        deps.log('drained, exiting');
        (deps.exit ?? process.exit)(0);
      })();
      return running;
    },
  };
  return drain;
}

export function installSignalHandlers(drain: Drain): void {
  process.on('SIGTERM', () => void drain.run('SIGTERM'));
  process.on('SIGINT', () => void drain.run('SIGINT'));
}
