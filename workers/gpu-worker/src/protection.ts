/**
 * Auto Scaling scale-in protection while the worker is busy (PPSD_ASG_NAME set): protected from the
 * first job in flight until the last one ends. Uses the `instanceProtection` helper of @ppsd/autoscaler.
 */

export interface Protection {
  busy(n: number): void;
  stop(): Promise<void>;
}

type ProtectionHelper = {
  setProtected?: (on: boolean) => Promise<void>;
  protect?: () => Promise<void>;
  unprotect?: () => Promise<void>;
  set?: (on: boolean) => Promise<void>;
};

export async function createProtection(
  asgName: string | null,
  log: (msg: string) => void,
): Promise<Protection> {
  const none: Protection = { busy: () => {}, stop: async () => {} };
  if (!asgName) return none;
  let helper: ProtectionHelper | null = null;
  try {
    const mod = (await import('@ppsd/autoscaler')) as Record<string, unknown>;
    const factory = mod.instanceProtection as
      | ((opts: { asgName: string; log?: (m: string) => void }) => unknown)
      | undefined;
    if (typeof factory === 'function') helper = (await factory({ asgName, log })) as ProtectionHelper;
  } catch (err) {
    log(`scale-in protection unavailable: ${(err as Error).message}`);
  }
  if (!helper) {
    log('PPSD_ASG_NAME is set but @ppsd/autoscaler has no instanceProtection helper: running unprotected');
    return none;
  }
  const h = helper;
  const set = (on: boolean): Promise<void> =>
    h.setProtected
      ? h.setProtected(on)
      : h.set
        ? h.set(on)
        : on
          ? (h.protect?.() ?? Promise.resolve())
          : (h.unprotect?.() ?? Promise.resolve());
  let want = false;
  let chain: Promise<void> = Promise.resolve();
  const apply = (on: boolean) => {
    if (on === want) return;
    want = on;
    chain = chain
      .then(() => set(on))
      .catch((err: Error) => log(`scale-in protection ${on ? 'on' : 'off'} failed: ${err.message}`));
  };
  return {
    busy: (n) => apply(n > 0),
    stop: async () => {
      apply(false);
      await chain;
    },
  };
}
