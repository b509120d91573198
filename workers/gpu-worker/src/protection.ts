/**
 * Auto Scaling scale-in protection while the worker is busy (PPSD_ASG_NAME set): protected from the
 * first job in flight until the last one ends, released when draining. Uses `instanceProtectionFromEnv`
 * of @ppsd/autoscaler (loaded only when PPSD_ASG_NAME is set); failures are logged there, never thrown.
 */
import type { Logger } from '@ppsd/contract/log';

export interface Protection {
  jobStarted(): void;
  jobFinished(): void;
  /** Drops the protection (draining) and waits for the call to settle. */
  stop(): Promise<void>;
}

const none: Protection = { jobStarted: () => {}, jobFinished: () => {}, stop: async () => {} };

export async function createProtection(asgName: string | null, log: Logger): Promise<Protection> {
  if (!asgName) return none;
  const { fieldsLogger, instanceProtectionFromEnv } = await import('@ppsd/autoscaler');
  const p = instanceProtectionFromEnv(
    { ...process.env, PPSD_ASG_NAME: asgName },
    { logger: fieldsLogger(log) },
  );
  log.info(`scale-in protection while busy: Auto Scaling group ${asgName}`);
  return {
    jobStarted: () => void p.jobStarted(),
    jobFinished: () => void p.jobFinished(),
    stop: async () => {
      await p.set(false);
    },
  };
}
