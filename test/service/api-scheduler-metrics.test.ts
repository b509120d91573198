/**
 * Scheduler load from worker heartbeats to /metrics, on a real Redis: a Heartbeat driven by a stub
 * stats provider (a known state) publishes it, the API's exposition carries vLLM's series under the
 * project prefix with exactly those values; then the same with the real engine on stories260K.
 */
import { keys, SCHEDULER_METRIC_PREFIX, WORKER_STALE_MS, type WorkerHeartbeat } from '@ppsd/contract';
import { Engine, type SchedulerStats } from '@ppsd/engine';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { renderScheduler } from '../../apps/api/src/metrics';
import { Heartbeat, stepDeltas } from '../../workers/gpu-worker/src/heartbeat';
import { MODEL, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import { storiesPackage } from '../helpers/stack';

let server: RedisServer;
let api: TestApi;
let redis: Redis;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url);
  redis = new Redis(server.url, { maxRetriesPerRequest: null });
});
afterAll(async () => {
  redis?.disconnect();
  await api?.close();
  await server?.stop();
});
beforeEach(async () => {
  await api.redis.del(keys.workers(MODEL), keys.metrics(MODEL));
  await api.queue().obliterate({ force: true });
});

const scrape = async () => {
  const res = await api.req('/metrics', { key: null });
  expect(res.status).toBe(200);
  return res.text();
};
const heartbeat = (workerId: string) =>
  new Heartbeat(redis, { workerId, modelId: MODEL, decoders: ['ar'], devices: ['cpu'] }, 60_000);
const m = `model_name="${MODEL}"`;

describe('scheduler metrics from a heartbeat', () => {
  it('exposes running, waiting, KV use, max batch per worker and the batch size histogram', async () => {
    const stats: SchedulerStats = {
      running: 3,
      waiting: 2,
      maxBatch: 16,
      kvUsedBytes: 256 << 20,
      kvBudgetBytes: 1024 << 20,
      stepsByBatchSize: { 1: 5, 3: 2, 16: 4, 40: 1 },
    };
    const hb = heartbeat('w-a');
    await hb.trackScheduler(() => stats);
    // two jobs queued that no worker took yet
    await api.queue().add('generate', { n: 1 });
    await api.queue().add('generate', { n: 2 });

    const beat = JSON.parse((await redis.hget(keys.workers(MODEL), 'w-a'))!) as WorkerHeartbeat;
    expect(beat.scheduler).toEqual({
      running: 3,
      waiting: 2,
      maxBatch: 16,
      kvUsedBytes: 256 << 20,
      kvBudgetBytes: 1024 << 20,
    });
    expect(await redis.hgetall(keys.metrics(MODEL))).toEqual({
      [`${SCHEDULER_METRIC_PREFIX.batchSteps}1`]: '5',
      [`${SCHEDULER_METRIC_PREFIX.batchSteps}3`]: '2',
      [`${SCHEDULER_METRIC_PREFIX.batchSteps}16`]: '4',
      [`${SCHEDULER_METRIC_PREFIX.batchSteps}40`]: '1',
    });

    let text = await scrape();
    const w = `${m},worker="w-a"`;
    for (const line of [
      `ppsd:num_requests_running{${w}} 3`,
      `ppsd:num_requests_waiting{${w}} 2`,
      `ppsd:kv_cache_usage_perc{${w}} 0.25`,
      `ppsd:max_num_seqs{${w}} 16`,
      // the queue's own backlog, and no job a worker took unaccounted for
      `ppsd:num_requests_waiting{${m}} 2`,
      `ppsd:num_requests_running{${m}} 0`,
      `ppsd:batch_size_bucket{${m},le="1"} 5`,
      `ppsd:batch_size_bucket{${m},le="2"} 5`,
      `ppsd:batch_size_bucket{${m},le="4"} 7`,
      `ppsd:batch_size_bucket{${m},le="8"} 7`,
      `ppsd:batch_size_bucket{${m},le="16"} 11`,
      `ppsd:batch_size_bucket{${m},le="32"} 11`,
      `ppsd:batch_size_bucket{${m},le="64"} 12`,
      `ppsd:batch_size_bucket{${m},le="+Inf"} 12`,
      `ppsd:batch_size_sum{${m}} ${5 * 1 + 2 * 3 + 4 * 16 + 40}`,
      `ppsd:batch_size_count{${m}} 12`,
    ]) {
      expect(text).toContain(`${line}\n`);
    }
    // one family each (HELP/TYPE once), the histogram typed as one
    for (const [name, type] of [
      ['ppsd:num_requests_running', 'gauge'],
      ['ppsd:num_requests_waiting', 'gauge'],
      ['ppsd:kv_cache_usage_perc', 'gauge'],
      ['ppsd:max_num_seqs', 'gauge'],
      ['ppsd:batch_size', 'histogram'],
    ]) {
      expect(text.match(new RegExp(`# TYPE ${name} `, 'g')), name).toHaveLength(1);
      expect(text).toContain(`# TYPE ${name} ${type}\n`);
    }

    // the engine ran more steps: the next beat adds only what grew (cumulative, nothing twice)
    stats.stepsByBatchSize = { 1: 6, 3: 2, 16: 7, 40: 1 };
    stats.running = 1;
    stats.waiting = 0;
    await hb.beat();
    await hb.beat();
    text = await scrape();
    expect(text).toContain(`ppsd:batch_size_bucket{${m},le="1"} 6\n`);
    expect(text).toContain(`ppsd:batch_size_bucket{${m},le="16"} 15\n`);
    expect(text).toContain(`ppsd:batch_size_count{${m}} 16\n`);
    expect(text).toContain(`ppsd:num_requests_running{${w}} 1\n`);
    expect(text).toContain(`ppsd:num_requests_waiting{${w}} 0\n`);

    // stop: the last steps are added, the worker's series leave with its heartbeat
    stats.stepsByBatchSize = { 1: 6, 3: 2, 16: 7, 40: 1, 2: 1 };
    await hb.stop();
    text = await scrape();
    expect(text).toContain(`ppsd:batch_size_count{${m}} 17\n`);
    expect(text).not.toContain('worker="w-a"');
  });

  it('leaves out stale workers and those with no scheduler; a failing write is retried', async () => {
    const now = Date.now();
    const beat = (over: Partial<WorkerHeartbeat>): string =>
      JSON.stringify({
        workerId: 'x',
        modelId: MODEL,
        ready: true,
        decoders: ['ar'],
        devices: ['cpu'],
        busy: 1,
        at: now,
        ...over,
      });
    const load = { running: 4, waiting: 1, maxBatch: 8, kvUsedBytes: 0, kvBudgetBytes: 0 };
    await api.redis.hset(keys.workers(MODEL), {
      stale: beat({ workerId: 'stale', at: now - WORKER_STALE_MS - 1000, scheduler: load }),
      old: beat({ workerId: 'old' }), // a worker from before batching: no scheduler field
      fresh: beat({ workerId: 'fresh', scheduler: load }),
    });
    const text = await scrape();
    expect(text).toContain(`ppsd:num_requests_running{${m},worker="fresh"} 4\n`);
    expect(text).toContain(`ppsd:kv_cache_usage_perc{${m},worker="fresh"} 0\n`); // no budget reported
    expect(text).not.toContain('worker="stale"');
    expect(text).not.toContain('worker="old"');
    expect(text).toContain(`ppsd:batch_size_count{${m}} 0\n`);

    // Redis refuses the first metrics write: the delta is kept and added by the next beat
    const hb = heartbeat('w-b');
    let steps: Record<number, number> = { 2: 3 };
    const stats = (): SchedulerStats => ({ ...load, stepsByBatchSize: steps });
    await api.redis.set(keys.metrics(MODEL), 'not a hash');
    await hb.trackScheduler(stats);
    await api.redis.del(keys.metrics(MODEL));
    steps = { 2: 4 };
    await hb.beat();
    expect(await api.redis.hget(keys.metrics(MODEL), `${SCHEDULER_METRIC_PREFIX.batchSteps}2`)).toBe('4');
    await hb.stop();
  });

  it('counts a job a worker took that no heartbeat accounts for as running at model level', () => {
    const load = { running: 2, waiting: 1, maxBatch: 4, kvUsedBytes: 1, kvBudgetBytes: 4 };
    const text = renderScheduler([
      {
        model: 'm',
        counts: { active: 5, waiting: 1, prioritized: 1, delayed: 0 },
        workers: [
          {
            workerId: 'a',
            modelId: 'm',
            ready: true,
            decoders: [],
            devices: [],
            busy: 3,
            at: 0,
            scheduler: load,
          },
          { workerId: 'b', modelId: 'm', ready: true, decoders: [], devices: [], busy: 2, at: 0 },
        ],
        metrics: {},
      },
    ]);
    // 5 active: 3 in worker a's engine (2 running + 1 waiting), 2 on worker b that reports nothing
    expect(text).toContain('ppsd:num_requests_running{model_name="m"} 2\n');
    expect(text).toContain('ppsd:num_requests_waiting{model_name="m"} 2\n');
    expect(text).toContain('ppsd:num_requests_running{model_name="m",worker="a"} 2\n');
    expect(text).toContain('ppsd:kv_cache_usage_perc{model_name="m",worker="a"} 0.25\n');
  });

  it('step deltas: only what grew, never negative', () => {
    expect(stepDeltas({ 1: 5, 2: 3 }, { 1: 5, 2: 1 })).toEqual({ 2: 2 });
    expect(stepDeltas({ 1: 4 }, { 1: 5 })).toEqual({});
    expect(stepDeltas({ 4: 2 }, {})).toEqual({ 4: 2 });
  });
});

describe('scheduler metrics from the real engine (stories260K)', () => {
  let engine: Engine;
  let pkg: { dir: string; cleanup(): Promise<void> };
  beforeAll(async () => {
    pkg = await storiesPackage();
    engine = await Engine.open(pkg.dir, { decoder: 'ar', maxBatch: 4 });
  });
  afterAll(async () => {
    await engine?.close();
    await pkg?.cleanup();
  });

  it('what the engine reports is what /metrics shows', async () => {
    let seen: SchedulerStats | undefined;
    const source = () => {
      seen = engine.schedulerStats();
      return seen;
    };
    const hb = heartbeat('w-real');
    await hb.trackScheduler(source);
    const params = { maxTokens: 12, temperature: 0.8, topP: 1, stop: [] };
    const runs = ['Once upon a time', 'The little dog', 'Tom and Sue'].map((prompt, i) =>
      engine.generate(prompt, { ...params, seed: i }),
    );
    // while the three are in the engine: the beat reports its running + waiting sequences
    await hb.beat();
    const during = JSON.parse((await redis.hget(keys.workers(MODEL), 'w-real'))!) as WorkerHeartbeat;
    expect(during.scheduler).toMatchObject({ running: seen!.running, waiting: seen!.waiting });
    expect(seen!.running + seen!.waiting).toBe(3);
    await Promise.all(runs);

    await hb.beat();
    const after = seen!;
    expect(after).toMatchObject({ running: 0, waiting: 0 });
    const steps = Object.entries(after.stepsByBatchSize).map(([size, n]) => [Number(size), n]);
    const count = steps.reduce((s, [, n]) => s + n, 0);
    const sum = steps.reduce((s, [size, n]) => s + size * n, 0);
    expect(count).toBeGreaterThan(0);
    const text = await scrape();
    const w = `${m},worker="w-real"`;
    expect(text).toContain(`ppsd:num_requests_running{${w}} 0\n`);
    expect(text).toContain(`ppsd:num_requests_waiting{${w}} 0\n`);
    expect(text).toContain(`ppsd:max_num_seqs{${w}} ${after.maxBatch}\n`);
    const perc = after.kvBudgetBytes > 0 ? after.kvUsedBytes / after.kvBudgetBytes : 0;
    expect(text).toContain(`ppsd:kv_cache_usage_perc{${w}} ${perc}\n`);
    expect(text).toContain(`ppsd:batch_size_count{${m}} ${count}\n`);
    expect(text).toContain(`ppsd:batch_size_sum{${m}} ${sum}\n`);
    expect(text).toContain(`ppsd:batch_size_bucket{${m},le="+Inf"} ${count}\n`);
    await hb.stop();
  });
});
