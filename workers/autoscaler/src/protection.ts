import { AutoScalingClient, SetInstanceProtectionCommand } from '@aws-sdk/client-auto-scaling';
import { createImds } from './imds';
import { type AwsClientLike, errorMessage, type Logger, silentLogger } from './log';

/**
 * Scale-in protection that a worker holds while it has jobs: protected on the first job it takes,
 * unprotected when its last job ends. Calls are serialized and only made when the wanted state
 * changes, so a worker taking many short jobs back to back does not flood the Auto Scaling API.
 * Failures are logged and reported as `false`, never thrown: protection is a best effort on top of
 * the termination lifecycle hook, which drains the worker in any case.
 */
export interface InstanceProtection {
  /** Call when a job starts; resolves true when the instance is (already) protected. */
  jobStarted(): Promise<boolean>;
  /** Call when a job ends in any way; resolves true when the protection state is as wanted. */
  jobFinished(): Promise<boolean>;
  /** Sets the protection explicitly (e.g. `false` when draining). */
  set(protect: boolean): Promise<boolean>;
  readonly activeJobs: number;
  /** The state last confirmed by the Auto Scaling API (null before the first call). */
  readonly protected: boolean | null;
  readonly enabled: boolean;
}

export interface InstanceProtectionOptions {
  asgName: string;
  autoscaling: AwsClientLike;
  /** Resolves this instance's id (default: IMDSv2 `instance-id`). */
  instanceId: () => Promise<string>;
  logger?: Logger;
}

export function createInstanceProtection(opts: InstanceProtectionOptions): InstanceProtection {
  if (!opts.asgName) throw new Error('asgName is required for instance protection');
  const log = opts.logger ?? silentLogger;
  let active = 0;
  let confirmed: boolean | null = null;
  let chain: Promise<unknown> = Promise.resolve();

  function apply(want: () => boolean): Promise<boolean> {
    const run = async (): Promise<boolean> => {
      const protect = want();
      if (confirmed === protect) return true;
      try {
        const instanceId = await opts.instanceId();
        await opts.autoscaling.send(
          new SetInstanceProtectionCommand({
            AutoScalingGroupName: opts.asgName,
            InstanceIds: [instanceId],
            ProtectedFromScaleIn: protect,
          }),
        );
        confirmed = protect;
        log.info(protect ? 'scale-in protection on' : 'scale-in protection off', {
          instanceId,
          activeJobs: active,
        });
        return true;
      } catch (err) {
        log.warn('SetInstanceProtection failed', { protect, error: errorMessage(err) });
        return false;
      }
    };
    const next = chain.then(run, run);
    chain = next;
    return next;
  }

  return {
    jobStarted() {
      active++;
      return apply(() => active > 0);
    },
    jobFinished() {
      active = Math.max(0, active - 1);
      return apply(() => active > 0);
    },
    set(protect: boolean) {
      return apply(() => protect);
    },
    get activeJobs() {
      return active;
    },
    get protected() {
      return confirmed;
    },
    enabled: true,
  };
}

/** Used when the worker does not run in an Auto Scaling group (local stack, tests). */
export function noopInstanceProtection(): InstanceProtection {
  let active = 0;
  return {
    async jobStarted() {
      active++;
      return true;
    },
    async jobFinished() {
      active = Math.max(0, active - 1);
      return true;
    },
    async set() {
      return true;
    },
    get activeJobs() {
      return active;
    },
    protected: null,
    enabled: false,
  };
}

/**
 * The worker's entry point: protection is on when `PPSD_ASG_NAME` is set, a no-op otherwise.
 * Region comes from `AWS_REGION` (set by the bootstrap), the instance id from IMDSv2.
 */
export function instanceProtectionFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  deps: { autoscaling?: AwsClientLike; instanceId?: () => Promise<string>; logger?: Logger } = {},
): InstanceProtection {
  const asgName = env.PPSD_ASG_NAME?.trim();
  if (!asgName) return noopInstanceProtection();
  if (!deps.autoscaling && !env.AWS_REGION) {
    throw new Error('PPSD_ASG_NAME is set but AWS_REGION is not: set AWS_REGION to the group region');
  }
  const imds = createImds({ endpoint: env.PPSD_IMDS_ENDPOINT || undefined });
  return createInstanceProtection({
    asgName,
    autoscaling: deps.autoscaling ?? new AutoScalingClient({ region: env.AWS_REGION }),
    instanceId: deps.instanceId ?? (() => imds.instanceId()),
    logger: deps.logger,
  });
}
