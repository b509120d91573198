import { DescribeAutoScalingGroupsCommand, SetDesiredCapacityCommand } from '@aws-sdk/client-auto-scaling';
import { PutMetricDataCommand, type PutMetricDataCommandInput } from '@aws-sdk/client-cloudwatch';
import {
  createBacklogPublisher,
  createQueueLoadReader,
  QUEUE_PREFIX,
  queueNameForModel,
  runBacklogPublisher,
  type TickReport,
} from '@ppsd/autoscaler';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RedisServer, startRedis } from '../helpers/redis-server';

interface Group {
  desired: number;
  min: number;
  max: number;
  states: string[];
}

/** In-process stand-ins for the two AWS clients: only `send`, recording every command. */
function fakeAws(group: Group, opts: { failPutTimes?: number } = {}) {
  const puts: PutMetricDataCommandInput[] = [];
  const setDesired: number[] = [];
  let failPut = opts.failPutTimes ?? 0;
  const cloudwatch = {
    async send(cmd: object) {
      if (!(cmd instanceof PutMetricDataCommand)) throw new Error(`unexpected ${cmd.constructor.name}`);
      if (failPut > 0) {
        failPut--;
        throw new Error('ThrottlingException');
      }
      puts.push(cmd.input);
      return {};
    },
  };
  const autoscaling = {
    async send(cmd: object) {
      if (cmd instanceof DescribeAutoScalingGroupsCommand) {
        expect(cmd.input.AutoScalingGroupNames).toEqual(['ppsd-workers']);
        return {
          AutoScalingGroups: [
            {
              AutoScalingGroupName: 'ppsd-workers',
              DesiredCapacity: group.desired,
              MinSize: group.min,
              MaxSize: group.max,
              Instances: group.states.map((s, i) => ({ InstanceId: `i-${i}`, LifecycleState: s })),
            },
          ],
        };
      }
      if (cmd instanceof SetDesiredCapacityCommand) {
        expect(cmd.input.AutoScalingGroupName).toBe('ppsd-workers');
        setDesired.push(cmd.input.DesiredCapacity ?? -1);
        group.desired = cmd.input.DesiredCapacity ?? group.desired;
        return {};
      }
      throw new Error(`unexpected ${cmd.constructor.name}`);
    },
  };
  return { cloudwatch, autoscaling, puts, setDesired };
}

function metric(put: PutMetricDataCommandInput, name: string): number | undefined {
  return put.MetricData?.find((d) => d.MetricName === name)?.Value;
}

describe('backlog publisher against a real Redis and BullMQ queue', () => {
  let server: RedisServer;
  let redis: Redis;
  let queue: Queue;
  const queueName = queueNameForModel('stories260K');

  beforeAll(async () => {
    server = await startRedis();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
    queue = new Queue(queueName, { connection: redis, prefix: QUEUE_PREFIX });
    // 3 waiting, 1 prioritized, 1 delayed that is due, 1 delayed in the future.
    await queue.addBulk([
      { name: 'generate', data: { n: 1 } },
      { name: 'generate', data: { n: 2 } },
      { name: 'generate', data: { n: 3 } },
    ]);
    await queue.add('generate', { n: 4 }, { priority: 5 });
    await queue.add('generate', { n: 5 }, { delay: 20 });
    await queue.add('generate', { n: 6 }, { delay: 3_600_000 });
    await new Promise((r) => setTimeout(r, 60));
  });

  afterAll(async () => {
    await queue?.obliterate({ force: true }).catch(() => {});
    await queue?.close();
    redis?.disconnect();
    await server?.stop();
  });

  it('names queues per model and keeps the keys under the {ppsd} hash tag', async () => {
    expect(queueName).toBe('ppsd-generate-stories260K');
    const keys = await redis.keys('*');
    expect(keys.length).toBeGreaterThan(0);
    for (const k of keys) expect(k.startsWith(`{ppsd}:${queueName}:`)).toBe(true);
    expect(() => queueNameForModel('bad id')).toThrow(/invalid model id/);
  });

  it('counts waiting + prioritized + due delayed jobs as backlog, not future delayed ones', async () => {
    const reader = createQueueLoadReader(redis, [queueName]);
    const [load] = await reader.read(Date.now());
    expect(load).toEqual({
      queue: queueName,
      waiting: 3,
      prioritized: 1,
      delayedReady: 1,
      backlog: 5,
      running: 0,
    });
    // An hour from now the far delayed job is due as well.
    const [later] = await reader.read(Date.now() + 3_600_001);
    expect(later.delayedReady).toBe(2);
    await reader.close();
    expect(await redis.ping()).toBe('PONG'); // the shared connection stays open
  });

  it('puts BacklogPerWorker = (backlog + running) / in-service workers into CloudWatch', async () => {
    const aws = fakeAws({ desired: 3, min: 0, max: 8, states: ['InService', 'InService', 'Pending'] });
    const t = Date.now();
    const publisher = createBacklogPublisher({
      redis,
      queues: [queueName],
      cloudwatch: aws.cloudwatch,
      autoscaling: aws.autoscaling,
      asgName: 'ppsd-workers',
      maxBatch: 1,
      targetPerWorker: 2,
      now: () => t,
    });
    const report = await publisher.tick();
    await publisher.close();
    expect(report).toMatchObject({
      backlog: 5,
      running: 0,
      inService: 2,
      desiredCapacity: 3,
      backlogPerWorker: 2.5,
    });
    expect(report.advice).toMatchObject({ desired: 3, reason: 'steady' });
    expect(report.wokeTo).toBeNull();
    expect(aws.setDesired).toEqual([]);
    expect(aws.puts).toHaveLength(1);
    const put = aws.puts[0];
    expect(put.Namespace).toBe('PPSD');
    const datum = put.MetricData?.find((d) => d.MetricName === 'BacklogPerWorker');
    expect(datum).toMatchObject({
      Value: 2.5,
      Dimensions: [{ Name: 'AutoScalingGroupName', Value: 'ppsd-workers' }],
      Timestamp: new Date(t),
    });
    expect(metric(put, 'Backlog')).toBe(5);
    expect(metric(put, 'RunningJobs')).toBe(0);
    expect(metric(put, 'InServiceWorkers')).toBe(2);
  });

  it('wakes the group from zero (target tracking cannot) and leaves it alone when idle', async () => {
    const aws = fakeAws({ desired: 0, min: 0, max: 4, states: [] });
    const publisher = createBacklogPublisher({
      redis,
      queues: [queueName],
      cloudwatch: aws.cloudwatch,
      autoscaling: aws.autoscaling,
      asgName: 'ppsd-workers',
      maxBatch: 1,
      targetPerWorker: 2,
    });
    const report = await publisher.tick();
    expect(report.backlogPerWorker).toBe(5); // no worker in service: the whole load
    expect(report.wokeTo).toBe(3); // ceil(5 / 2)
    expect(aws.setDesired).toEqual([3]);
    await publisher.close();

    const idle = fakeAws({ desired: 0, min: 0, max: 4, states: [] });
    const empty = createBacklogPublisher({
      redis,
      queues: [queueNameForModel('no-jobs-here')],
      cloudwatch: idle.cloudwatch,
      autoscaling: idle.autoscaling,
      asgName: 'ppsd-workers',
      maxBatch: 1,
      wakeFromZero: true,
    });
    const quiet = await empty.tick();
    await empty.close();
    expect(quiet).toMatchObject({ backlog: 0, running: 0, backlogPerWorker: 0, wokeTo: null });
    expect(idle.setDesired).toEqual([]);
    expect(metric(idle.puts[0], 'BacklogPerWorker')).toBe(0);
  });

  it('counts capacity in sequences: workers x maxBatch (metric and wake-from-zero)', async () => {
    const aws = fakeAws({ desired: 2, min: 0, max: 8, states: ['InService', 'InService'] });
    const publisher = createBacklogPublisher({
      redis,
      queues: [queueName],
      cloudwatch: aws.cloudwatch,
      autoscaling: aws.autoscaling,
      asgName: 'ppsd-workers',
      maxBatch: 4,
    });
    const report = await publisher.tick();
    await publisher.close();
    // 5 jobs on 2 workers of 4 sequences each: 5 / 8 of the capacity, and 2 workers are what 5 need
    expect(report).toMatchObject({ backlog: 5, inService: 2, maxBatch: 4, backlogPerWorker: 0.625 });
    expect(metric(aws.puts[0], 'BacklogPerWorker')).toBe(0.625);
    expect(report.advice).toMatchObject({ needed: 2, desired: 2, reason: 'steady' });

    const zero = fakeAws({ desired: 0, min: 0, max: 8, states: [] });
    const waking = createBacklogPublisher({
      redis,
      queues: [queueName],
      cloudwatch: zero.cloudwatch,
      autoscaling: zero.autoscaling,
      asgName: 'ppsd-workers',
      maxBatch: 4,
    });
    const woke = await waking.tick();
    await waking.close();
    expect(woke.backlogPerWorker).toBe(1.25); // as if one worker carried the whole load
    expect(woke.wokeTo).toBe(2); // ceil(5 / 4), not one worker per job
    expect(zero.setDesired).toEqual([2]);
  });

  it('counts a job a worker holds as running, not backlog', async () => {
    const workerConn = new Redis(server.url, { maxRetriesPerRequest: null });
    let release: () => void = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    let started: () => void = () => {};
    const active = new Promise<void>((r) => {
      started = r;
    });
    const worker = new Worker(
      queueName,
      async () => {
        started();
        await held;
      },
      { connection: workerConn, prefix: QUEUE_PREFIX, concurrency: 1 },
    );
    try {
      await active;
      const aws = fakeAws({ desired: 1, min: 0, max: 4, states: ['InService'] });
      const publisher = createBacklogPublisher({
        redis,
        queues: [queueName],
        cloudwatch: aws.cloudwatch,
        autoscaling: aws.autoscaling,
        asgName: 'ppsd-workers',
        maxBatch: 1,
      });
      const report = await publisher.tick();
      await publisher.close();
      expect(report.running).toBe(1);
      expect(report.backlog).toBe(4);
      expect(report.backlogPerWorker).toBe(5);
      expect(metric(aws.puts[0], 'RunningJobs')).toBe(1);
    } finally {
      release();
      await worker.close();
      workerConn.disconnect();
    }
  });

  it('runs on an interval, survives a failed put, and stops on abort', async () => {
    const aws = fakeAws({ desired: 1, min: 0, max: 4, states: ['InService'] }, { failPutTimes: 1 });
    const controller = new AbortController();
    const reports: TickReport[] = [];
    const errors: unknown[] = [];
    await runBacklogPublisher({
      redis,
      queues: [queueName],
      cloudwatch: aws.cloudwatch,
      autoscaling: aws.autoscaling,
      asgName: 'ppsd-workers',
      maxBatch: 1,
      intervalMs: 20,
      signal: controller.signal,
      onError: (e) => errors.push(e),
      onTick: (r) => {
        reports.push(r);
        if (reports.length === 3) controller.abort();
      },
    });
    expect(errors).toHaveLength(1);
    expect(reports).toHaveLength(3);
    expect(aws.puts).toHaveLength(3);
    for (const p of aws.puts)
      expect(p.MetricData?.some((d) => d.MetricName === 'BacklogPerWorker')).toBe(true);
  });

  it('fails a tick clearly when the group does not exist', async () => {
    const aws = fakeAws({ desired: 1, min: 0, max: 4, states: [] });
    const publisher = createBacklogPublisher({
      redis,
      queues: [queueName],
      cloudwatch: aws.cloudwatch,
      autoscaling: { send: async () => ({ AutoScalingGroups: [] }) },
      asgName: 'missing-group',
      maxBatch: 1,
    });
    await expect(publisher.tick()).rejects.toThrow(/Auto Scaling group missing-group not found/);
    await publisher.close();
    expect(aws.puts).toHaveLength(0);
  });
});
