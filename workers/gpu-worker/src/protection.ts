/**
 * Auto Scaling scale-in protection while the worker is busy (PPSD_ASG_NAME set): protected from the
 * first job in flight until the last one ends, released when draining. Uses `instanceProtectionFromEnv`
 * of @ppsd/autoscaler (loaded only when PPSD_ASG_NAME is set); failures are logged there, never thrown.
 */
import type { Logger } from '@ppsd/autoscaler';

export interface Protection {
  jobStarted(): void;
  jobFinished(): void;
  /** Drops the protection (draining) and waits for the call to settle. */
  stop(): Promise<void>;
}

const none: Protection = { jobStarted: () => {}, jobFinished: () => {}, stop: async () => {} };

export async function createProtection(
  asgName: string | null,
  log: (msg: string) => void,
): Promise<Protection> {
  if (!asgName) return none;
  const { instanceProtectionFromEnv } = await import('@ppsd/autoscaler');
  const line = (msg: string, f?: object) =>
    log(f && Object.keys(f).length ? `${msg} ${JSON.stringify(f)}` : msg);
  const logger: Logger = { info: line, warn: line, error: line };
  const p = instanceProtectionFromEnv({ ...process.env, PPSD_ASG_NAME: asgName }, { logger });
  log(`scale-in protection while busy: Auto Scaling group ${asgName}`);
  return {
    jobStarted: () => void p.jobStarted(),
    jobFinished: () => void p.jobFinished(),
    stop: async () => {
      await p.set(false);
    },
  };
}
