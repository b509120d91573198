import { setTimeout as sleep } from 'node:timers/promises';
import {
  AutoScalingClient,
  type AutoScalingGroup,
  DescribeAutoScalingGroupsCommand,
  type DescribeAutoScalingGroupsCommandOutput,
  SetDesiredCapacityCommand,
} from '@aws-sdk/client-auto-scaling';
import { CloudWatchClient, type MetricDatum, PutMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import type { Redis } from 'ioredis';
import { createQueueLoadReader, QUEUE_PREFIX, type QueueLoad } from './backlog';
import { backlogPerWorker, type CapacityDecision, desiredCapacity } from './capacity';
import type { PublisherConfig } from './config';
import { type AwsClientLike, errorMessage, type Logger, silentLogger } from './log';

export const DEFAULT_NAMESPACE = 'PPSD';
export const DEFAULT_METRIC_NAME = 'BacklogPerWorker';

export interface PublisherOptions {
  /** ioredis connection to the BullMQ Redis (shared; not closed by the publisher). */
  redis: Redis;
  /** BullMQ queue names (`ppsd-generate-<modelId>`) whose jobs the worker group serves. */
  queues: string[];
  /** CloudWatch client (only `send(PutMetricDataCommand)` is used). */
  cloudwatch: AwsClientLike;
  /** Auto Scaling client (`DescribeAutoScalingGroups`, and `SetDesiredCapacity` to wake from zero). */
  autoscaling: AwsClientLike;
  /** The GPU worker group; also the metric's `AutoScalingGroupName` dimension. */
  asgName: string;
  /** Milliseconds between ticks of `runBacklogPublisher` (default 60 000). */
  intervalMs?: number;
  namespace?: string;
  metricName?: string;
  /**
   * Target jobs per worker batch slot; must equal the target-tracking policy's target value (default 1).
   */
  targetPerWorker?: number;
  /**
   * Sequences each worker runs at once (the workers' PPSD_MAX_BATCH): the metric divides the load by
   * in-service workers x maxBatch.
   */
  maxBatch: number;
  /**
   * Target tracking scales proportionally to the current capacity and so cannot leave 0 on its own:
   * when the group's desired capacity is 0 and jobs are queued, the publisher sets it from
   * `desiredCapacity()` (default true).
   */
  wakeFromZero?: boolean;
  /** BullMQ prefix (default `{ppsd}`). */
  prefix?: string;
  logger?: Logger;
  now?: () => number;
}

export interface TickReport {
  at: number;
  queues: QueueLoad[];
  backlog: number;
  running: number;
  inService: number;
  desiredCapacity: number;
  minSize: number;
  maxSize: number;
  /** (backlog + running) / (in-service workers x maxBatch): the scaling metric. */
  backlogPerWorker: number;
  maxBatch: number;
  /** What `desiredCapacity()` would do now (advisory; target tracking acts on the metric). */
  advice: CapacityDecision | null;
  /** Set when the publisher raised the group from zero itself. */
  wokeTo: number | null;
}

export interface BacklogPublisher {
  tick(): Promise<TickReport>;
  close(): Promise<void>;
}

async function describeGroup(autoscaling: AwsClientLike, asgName: string): Promise<AutoScalingGroup> {
  const out = (await autoscaling.send(
    new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [asgName] }),
  )) as DescribeAutoScalingGroupsCommandOutput;
  const group = out.AutoScalingGroups?.find((g) => g.AutoScalingGroupName === asgName);
  if (!group) throw new Error(`Auto Scaling group ${asgName} not found`);
  return group;
}

export function createBacklogPublisher(opts: PublisherOptions): BacklogPublisher {
  const namespace = opts.namespace ?? DEFAULT_NAMESPACE;
  const metricName = opts.metricName ?? DEFAULT_METRIC_NAME;
  const target = opts.targetPerWorker ?? 1;
  const wakeFromZero = opts.wakeFromZero ?? true;
  const log = opts.logger ?? silentLogger;
  const now = opts.now ?? Date.now;
  if (!opts.asgName) throw new Error('asgName is required');
  if (!(Number.isFinite(target) && target > 0)) throw new Error(`targetPerWorker must be > 0, got ${target}`);
  const maxBatch = opts.maxBatch;
  if (!(Number.isInteger(maxBatch) && maxBatch >= 1))
    throw new Error(`maxBatch must be an integer >= 1, got ${maxBatch}`);
  const reader = createQueueLoadReader(opts.redis, opts.queues, opts.prefix ?? QUEUE_PREFIX);

  return {
    async tick(): Promise<TickReport> {
      const at = now();
      const [loads, group] = await Promise.all([
        reader.read(at),
        describeGroup(opts.autoscaling, opts.asgName),
      ]);
      const backlog = loads.reduce((s, q) => s + q.backlog, 0);
      const running = loads.reduce((s, q) => s + q.running, 0);
      const inService = (group.Instances ?? []).filter((i) => i.LifecycleState === 'InService').length;
      const current = group.DesiredCapacity ?? 0;
      const minSize = group.MinSize ?? 0;
      const maxSize = group.MaxSize ?? 0;
      const perWorker = backlogPerWorker(backlog, running, inService, maxBatch);

      const dims = [{ Name: 'AutoScalingGroupName', Value: opts.asgName }];
      const timestamp = new Date(at);
      const data: MetricDatum[] = [
        { MetricName: metricName, Dimensions: dims, Timestamp: timestamp, Value: perWorker, Unit: 'None' },
        { MetricName: 'Backlog', Dimensions: dims, Timestamp: timestamp, Value: backlog, Unit: 'Count' },
        { MetricName: 'RunningJobs', Dimensions: dims, Timestamp: timestamp, Value: running, Unit: 'Count' },
        {
          MetricName: 'InServiceWorkers',
          Dimensions: dims,
          Timestamp: timestamp,
          Value: inService,
          Unit: 'Count',
        },
      ];
      await opts.cloudwatch.send(new PutMetricDataCommand({ Namespace: namespace, MetricData: data }));

      let advice: CapacityDecision | null = null;
      let wokeTo: number | null = null;
      if (maxSize >= 1 && minSize <= maxSize) {
        advice = desiredCapacity({
          backlog,
          running,
          inService,
          currentDesired: current,
          targetPerWorker: target,
          maxBatch,
          minWorkers: minSize,
          maxWorkers: maxSize,
          scaleToZero: minSize === 0,
        });
        if (wakeFromZero && current === 0 && advice.reason === 'wake-from-zero' && advice.desired > 0) {
          await opts.autoscaling.send(
            new SetDesiredCapacityCommand({
              AutoScalingGroupName: opts.asgName,
              DesiredCapacity: advice.desired,
              HonorCooldown: false,
            }),
          );
          wokeTo = advice.desired;
          log.info('woke worker group from zero', {
            asg: opts.asgName,
            desired: advice.desired,
            backlog,
            running,
          });
        }
      }
      const report: TickReport = {
        at,
        queues: loads,
        backlog,
        running,
        inService,
        desiredCapacity: current,
        minSize,
        maxSize,
        backlogPerWorker: perWorker,
        maxBatch,
        advice,
        wokeTo,
      };
      log.info('published backlog', {
        asg: opts.asgName,
        namespace,
        metric: metricName,
        backlog,
        running,
        inService,
        desired: current,
        backlogPerWorker: perWorker,
        maxBatch,
        advice: advice ? { desired: advice.desired, reason: advice.reason } : null,
      });
      return report;
    },
    close: () => reader.close(),
  };
}

/**
 * Publishes backlog-per-worker every `intervalMs` until `signal` aborts. A failed tick is logged and
 * the loop goes on (a missing data point only delays scaling; target tracking tolerates gaps).
 */
export async function runBacklogPublisher(
  opts: PublisherOptions & {
    signal?: AbortSignal;
    onTick?: (r: TickReport) => void;
    onError?: (e: unknown) => void;
  },
): Promise<void> {
  const intervalMs = opts.intervalMs ?? 60_000;
  if (!(Number.isFinite(intervalMs) && intervalMs > 0))
    throw new Error(`intervalMs must be > 0, got ${intervalMs}`);
  const log = opts.logger ?? silentLogger;
  const publisher = createBacklogPublisher(opts);
  try {
    while (!opts.signal?.aborted) {
      const started = Date.now();
      try {
        opts.onTick?.(await publisher.tick());
      } catch (err) {
        log.error('backlog publish failed', { error: errorMessage(err) });
        opts.onError?.(err);
      }
      const wait = Math.max(0, intervalMs - (Date.now() - started));
      try {
        await sleep(wait, undefined, { signal: opts.signal });
      } catch {
        break; // aborted
      }
    }
  } finally {
    await publisher.close();
  }
}

/**
 * The publisher's dependencies in AWS, from its validated configuration: the one place the Lambda
 * (./lambda.ts) and the long-running process (./main.ts) build their clients.
 */
export function awsPublisherOptions(
  config: PublisherConfig,
  redis: PublisherOptions['redis'],
  logger: PublisherOptions['logger'],
): PublisherOptions {
  return {
    redis,
    queues: config.queues,
    prefix: config.prefix,
    cloudwatch: new CloudWatchClient({ region: config.region }),
    autoscaling: new AutoScalingClient({ region: config.region }),
    asgName: config.asgName,
    namespace: config.namespace,
    metricName: config.metricName,
    targetPerWorker: config.targetPerWorker,
    maxBatch: config.maxBatch,
    wakeFromZero: config.wakeFromZero,
    logger,
  };
}
