import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CompleteLifecycleActionCommand,
  RecordLifecycleActionHeartbeatCommand,
  SetInstanceProtectionCommand,
} from '@aws-sdk/client-auto-scaling';
import {
  ConfigError,
  createImds,
  createInstanceProtection,
  dockerStopper,
  drainConfigFromEnv,
  instanceProtectionFromEnv,
  parseStopSpec,
  publisherConfigFromEnv,
  runDrainWatcher,
  systemdStopper,
} from '@ppsd/autoscaler';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/** A local IMDSv2 look-alike: PUT /latest/api/token, then GETs that must carry the token. */
class FakeImds {
  server!: Server;
  url = '';
  state: string | undefined = 'InService';
  tokens = 0;
  gets: string[] = [];
  revokeNext = false;

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    const addr = this.server.address();
    this.url = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    if (req.method === 'PUT' && req.url === '/latest/api/token') {
      if (!req.headers['x-aws-ec2-metadata-token-ttl-seconds']) return void res.writeHead(400).end();
      this.tokens++;
      return void res.writeHead(200).end(`token-${this.tokens}`);
    }
    const token = req.headers['x-aws-ec2-metadata-token'];
    if (req.method !== 'GET' || token !== `token-${this.tokens}` || this.revokeNext) {
      this.revokeNext = false;
      return void res.writeHead(401).end();
    }
    this.gets.push(req.url ?? '');
    const path = (req.url ?? '').replace('/latest/meta-data/', '');
    const values: Record<string, string | undefined> = {
      'instance-id': 'i-0abc123',
      'placement/region': 'eu-west-1',
      'autoscaling/target-lifecycle-state': this.state,
    };
    const v = values[path];
    if (v === undefined) return void res.writeHead(404).end();
    res.writeHead(200).end(v);
  }

  stop(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe('IMDSv2 client', () => {
  const imds = new FakeImds();
  beforeAll(() => imds.start());
  afterAll(() => imds.stop());

  it('fetches a session token once and reuses it', async () => {
    const client = createImds({ endpoint: imds.url });
    expect(await client.instanceId()).toBe('i-0abc123');
    expect(await client.region()).toBe('eu-west-1');
    expect(await client.targetLifecycleState()).toBe('InService');
    expect(imds.tokens).toBe(1);
  });

  it('refreshes the token on 401 and reports 404 as undefined', async () => {
    const client = createImds({ endpoint: imds.url });
    await client.region();
    imds.revokeNext = true;
    expect(await client.region()).toBe('eu-west-1');
    imds.state = undefined;
    expect(await client.targetLifecycleState()).toBeUndefined();
    imds.state = 'InService';
  });
});

describe('instance scale-in protection', () => {
  function fakeAsg(failTimes = 0) {
    const calls: { protect: boolean; ids: string[] }[] = [];
    let fail = failTimes;
    return {
      calls,
      client: {
        async send(cmd: object) {
          if (!(cmd instanceof SetInstanceProtectionCommand)) throw new Error('unexpected command');
          await new Promise((r) => setTimeout(r, 5));
          if (fail-- > 0) throw new Error('ValidationError: instance not InService');
          expect(cmd.input.AutoScalingGroupName).toBe('ppsd-workers');
          calls.push({ protect: cmd.input.ProtectedFromScaleIn ?? false, ids: cmd.input.InstanceIds ?? [] });
          return {};
        },
      },
    };
  }

  it('protects on the first job, unprotects after the last, and skips redundant calls', async () => {
    const asg = fakeAsg();
    const p = createInstanceProtection({
      asgName: 'ppsd-workers',
      autoscaling: asg.client,
      instanceId: async () => 'i-0abc123',
    });
    expect(await p.jobStarted()).toBe(true);
    expect(await p.jobStarted()).toBe(true);
    expect(p.activeJobs).toBe(2);
    expect(await p.jobFinished()).toBe(true);
    expect(p.protected).toBe(true);
    expect(await p.jobFinished()).toBe(true);
    expect(p.protected).toBe(false);
    expect(asg.calls).toEqual([
      { protect: true, ids: ['i-0abc123'] },
      { protect: false, ids: ['i-0abc123'] },
    ]);
  });

  it('serializes overlapping calls and ends in the state the job count asks for', async () => {
    const asg = fakeAsg();
    const p = createInstanceProtection({
      asgName: 'ppsd-workers',
      autoscaling: asg.client,
      instanceId: async () => 'i-1',
    });
    await Promise.all([p.jobStarted(), p.jobStarted(), p.jobFinished(), p.jobFinished(), p.jobStarted()]);
    expect(p.activeJobs).toBe(1);
    expect(p.protected).toBe(true);
    expect(asg.calls.at(-1)).toEqual({ protect: true, ids: ['i-1'] });
  });

  it('reports failures as false without throwing, and retries on the next change', async () => {
    const asg = fakeAsg(1);
    const p = createInstanceProtection({
      asgName: 'ppsd-workers',
      autoscaling: asg.client,
      instanceId: async () => 'i-1',
    });
    expect(await p.jobStarted()).toBe(false);
    expect(p.protected).toBeNull();
    expect(await p.jobStarted()).toBe(true);
    expect(asg.calls).toEqual([{ protect: true, ids: ['i-1'] }]);
  });

  it('is a no-op without PPSD_ASG_NAME, and takes the instance id from IMDS otherwise', async () => {
    const noop = instanceProtectionFromEnv({});
    expect(noop.enabled).toBe(false);
    expect(await noop.jobStarted()).toBe(true);
    expect(() => instanceProtectionFromEnv({ PPSD_ASG_NAME: 'g' })).toThrow(/AWS_REGION/);

    const imds = new FakeImds();
    await imds.start();
    try {
      const asg = fakeAsg();
      const p = instanceProtectionFromEnv(
        { PPSD_ASG_NAME: 'ppsd-workers', AWS_REGION: 'eu-west-1', PPSD_IMDS_ENDPOINT: imds.url },
        { autoscaling: asg.client },
      );
      expect(p.enabled).toBe(true);
      await p.jobStarted();
      expect(asg.calls).toEqual([{ protect: true, ids: ['i-0abc123'] }]);
    } finally {
      await imds.stop();
    }
  });
});

describe('lifecycle drain watcher', () => {
  const imds = new FakeImds();
  beforeAll(() => imds.start());
  afterAll(() => imds.stop());

  function fakeAsg(failCompletes = 0) {
    const events: string[] = [];
    let fail = failCompletes;
    return {
      events,
      client: {
        async send(cmd: object) {
          if (cmd instanceof RecordLifecycleActionHeartbeatCommand) {
            events.push('heartbeat');
            return {};
          }
          if (cmd instanceof CompleteLifecycleActionCommand) {
            if (fail-- > 0) throw new Error('throttled');
            expect(cmd.input).toEqual({
              AutoScalingGroupName: 'ppsd-workers',
              LifecycleHookName: 'ppsd-workers-drain',
              InstanceId: 'i-0abc123',
              LifecycleActionResult: 'CONTINUE',
            });
            events.push('complete');
            return {};
          }
          throw new Error('unexpected command');
        },
      },
    };
  }

  it('waits while in service, then stops the worker and completes the lifecycle action', async () => {
    imds.state = 'InService';
    const asg = fakeAsg(1);
    const order: string[] = [];
    const watching = runDrainWatcher({
      imds: createImds({ endpoint: imds.url }),
      autoscaling: asg.client,
      asgName: 'ppsd-workers',
      hookName: 'ppsd-workers-drain',
      pollIntervalMs: 10,
      heartbeatIntervalMs: 15,
      retryDelayMs: 1,
      stopWorker: async () => {
        order.push('stop-start');
        await new Promise((r) => setTimeout(r, 60)); // the worker drains for a while
        order.push('stop-done');
      },
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(order).toEqual([]);
    imds.state = 'Terminated';
    expect(await watching).toBe('drained');
    expect(order).toEqual(['stop-start', 'stop-done']);
    expect(asg.events.at(-1)).toBe('complete');
    expect(asg.events.filter((e) => e === 'heartbeat').length).toBeGreaterThanOrEqual(1);
    imds.state = 'InService';
  });

  it('completes the action even when stopping the worker fails', async () => {
    imds.state = 'Terminated';
    const asg = fakeAsg();
    const outcome = await runDrainWatcher({
      imds: createImds({ endpoint: imds.url }),
      autoscaling: asg.client,
      asgName: 'ppsd-workers',
      hookName: 'ppsd-workers-drain',
      pollIntervalMs: 10,
      stopWorker: async () => {
        throw new Error('unit not found');
      },
    });
    expect(outcome).toBe('drained');
    expect(asg.events).toEqual(['complete']);
    imds.state = 'InService';
  });

  it('keeps polling through IMDS errors and stops when aborted', async () => {
    const controller = new AbortController();
    let polls = 0;
    const outcome = runDrainWatcher({
      imds: {
        async targetLifecycleState() {
          polls++;
          if (polls === 3) controller.abort();
          throw new Error('connect ECONNREFUSED');
        },
        instanceId: async () => 'i-x',
      },
      autoscaling: fakeAsg().client,
      asgName: 'ppsd-workers',
      hookName: 'ppsd-workers-drain',
      pollIntervalMs: 5,
      stopWorker: async () => {},
      signal: controller.signal,
    });
    expect(await outcome).toBe('aborted');
    expect(polls).toBe(3);
  });
});

describe('worker stoppers', () => {
  it('stops a container through the Docker Engine API on its unix socket', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ppsd-docker-'));
    const socketPath = join(dir, 'docker.sock');
    const requests: string[] = [];
    const server = createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      if (req.url?.startsWith('/containers/ppsd-worker/stop')) return void res.writeHead(204).end();
      if (req.url?.startsWith('/containers/gone/stop'))
        return void res.writeHead(404).end('{"message":"No such container"}');
      res.writeHead(500).end('{"message":"boom"}');
    });
    await new Promise<void>((r) => server.listen(socketPath, r));
    try {
      await dockerStopper('ppsd-worker', { socketPath, timeoutSeconds: 600 })();
      await dockerStopper('gone', { socketPath })();
      await expect(dockerStopper('other', { socketPath })()).rejects.toThrow(/HTTP 500/);
      expect(requests[0]).toBe('POST /containers/ppsd-worker/stop?t=600');
    } finally {
      await new Promise((r) => server.close(r));
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('runs systemctl stop for a systemd unit', async () => {
    const ran: string[][] = [];
    await systemdStopper('ppsd-worker.service', async (file, args) => {
      ran.push([file, ...args]);
    })();
    expect(ran).toEqual([['systemctl', 'stop', 'ppsd-worker.service']]);
  });

  it('parses PPSD_DRAIN_STOP', () => {
    expect(parseStopSpec('docker:ppsd-worker')).toMatchObject({ kind: 'docker', target: 'ppsd-worker' });
    expect(parseStopSpec('systemd:ppsd-worker.service')).toMatchObject({ kind: 'systemd' });
    expect(() => parseStopSpec('kill -9 1')).toThrow(/PPSD_DRAIN_STOP/);
  });
});

describe('configuration from the environment', () => {
  it('reads the publisher config with defaults', () => {
    const c = publisherConfigFromEnv({
      PPSD_REDIS_URL: 'rediss://:tok@redis.internal:6379',
      PPSD_ASG_NAME: 'ppsd-workers',
      AWS_REGION: 'eu-west-1',
      PPSD_MODELS: 'stories260K, llama-7b',
      PPSD_TARGET_BACKLOG_PER_WORKER: '2',
    });
    expect(c).toMatchObject({
      queues: ['ppsd-generate-stories260K', 'ppsd-generate-llama-7b'],
      namespace: 'PPSD',
      metricName: 'BacklogPerWorker',
      targetPerWorker: 2,
      maxBatch: 16, // the workers' default PPSD_MAX_BATCH
      intervalMs: 60_000,
      wakeFromZero: true,
      prefix: '{ppsd}',
    });
    expect(publisherConfigFromEnv({ ...minimal(), PPSD_QUEUES: 'q1,q2' }).queues).toEqual(['q1', 'q2']);
    expect(publisherConfigFromEnv({ ...minimal(), PPSD_QUEUES: 'q1', PPSD_MAX_BATCH: '32' }).maxBatch).toBe(
      32,
    );
  });

  it('lists every problem at once', () => {
    try {
      publisherConfigFromEnv({
        PPSD_REDIS_URL: 'http://x',
        PPSD_TARGET_BACKLOG_PER_WORKER: '0',
        PPSD_PUBLISH_INTERVAL_MS: 'soon',
        PPSD_WAKE_FROM_ZERO: 'maybe',
        PPSD_MAX_BATCH: '0',
      });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      const problems = (err as ConfigError).problems.join('\n');
      for (const needle of [
        'PPSD_REDIS_URL must start with redis://',
        'PPSD_ASG_NAME is required',
        'AWS_REGION is required',
        'PPSD_MODELS',
        'PPSD_TARGET_BACKLOG_PER_WORKER must be a number >= 0.01',
        'PPSD_PUBLISH_INTERVAL_MS must be an integer >= 1000',
        'PPSD_WAKE_FROM_ZERO must be true or false',
        'PPSD_MAX_BATCH must be an integer >= 1',
      ]) {
        expect(problems).toContain(needle);
      }
    }
  });

  it('reads the drain watcher config', () => {
    expect(() => drainConfigFromEnv({})).toThrow(/PPSD_ASG_NAME is required[\s\S]*PPSD_LIFECYCLE_HOOK_NAME/);
    expect(() =>
      drainConfigFromEnv({ PPSD_ASG_NAME: 'a', PPSD_LIFECYCLE_HOOK_NAME: 'h', PPSD_DRAIN_STOP: 'rm -rf' }),
    ).toThrow(/PPSD_DRAIN_STOP/);
    expect(
      drainConfigFromEnv({
        PPSD_ASG_NAME: 'a',
        PPSD_LIFECYCLE_HOOK_NAME: 'h',
        PPSD_DRAIN_STOP: 'docker:ppsd-worker',
      }),
    ).toMatchObject({
      stopSpec: 'docker:ppsd-worker',
      drainTimeoutSeconds: 870,
      pollIntervalMs: 5000,
      region: undefined,
    });
  });
});

function minimal(): Record<string, string> {
  return { PPSD_REDIS_URL: 'redis://127.0.0.1:6379', PPSD_ASG_NAME: 'g', AWS_REGION: 'eu-west-1' };
}
