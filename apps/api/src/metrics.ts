/**
 * Prometheus metrics with the contract's (vLLM-style) names. Latency histograms are observed by the API
 * for the requests it relays, from the stream entry ids (each id is the ms time the worker wrote it), so
 * they measure the worker's timing, not the client's connection. Queue gauges come from BullMQ job counts
 * at scrape time; speculative-decoding and pipeline counters are the worker-maintained Redis hash
 * `keys.metrics(model)`, rendered here under the contract names.
 *
 * Scheduler load as vLLM names it: `num_requests_running` / `num_requests_waiting` per worker (label
 * `worker`, from each fresh heartbeat's `scheduler`: sequences in the engine's batch / waiting inside the
 * engine for a slot or KV memory), and per model without a worker label what no worker reports (waiting:
 * the queue's backlog; running: jobs taken by a worker whose heartbeat does not account for them), so a
 * sum over the family counts every job once. `kv_cache_usage_perc` and `max_num_seqs` per worker, and the
 * `batch_size` histogram from the batched steps the workers add to `keys.metrics(model)`.
 */
import {
  freshHeartbeats,
  keys,
  METRIC_FIELDS,
  SCHEDULER_METRIC_PREFIX,
  STAGE_METRIC_PREFIX,
  type StreamEvent,
  type WorkerHeartbeat,
} from '@ppsd/contract';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Counter, Histogram, type Registry } from 'prom-client';
import type { StreamEntry } from './adapters/redis-events';
import type { ModelRegistry } from './models';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640];
const ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** Counters the worker keeps in `keys.metrics(model)` (HINCRBY/HINCRBYFLOAT), exposed as counters. */
export const WORKER_COUNTERS: { field: string; name: string; help: string }[] = [
  {
    field: METRIC_FIELDS.drafts,
    name: 'ppsd:spec_decode_num_drafts_total',
    help: 'Speculative drafts (verification steps with a draft).',
  },
  {
    field: METRIC_FIELDS.draftTokens,
    name: 'ppsd:spec_decode_num_draft_tokens_total',
    help: 'Draft tokens proposed.',
  },
  {
    field: METRIC_FIELDS.acceptedTokens,
    name: 'ppsd:spec_decode_num_accepted_tokens_total',
    help: 'Draft tokens accepted.',
  },
  { field: METRIC_FIELDS.promptTokens, name: 'ppsd:prompt_tokens_total', help: 'Prompt tokens processed.' },
  {
    field: METRIC_FIELDS.generationTokens,
    name: 'ppsd:generation_tokens_total',
    help: 'Verified tokens generated.',
  },
  { field: METRIC_FIELDS.requestSuccess, name: 'ppsd:request_success_total', help: 'Jobs completed.' },
  { field: METRIC_FIELDS.requestFailure, name: 'ppsd:request_failure_total', help: 'Jobs failed.' },
  { field: METRIC_FIELDS.requestCancelled, name: 'ppsd:request_cancelled_total', help: 'Jobs cancelled.' },
  {
    field: METRIC_FIELDS.deviceSeconds,
    name: 'ppsd:device_seconds_total',
    help: 'Device seconds held by jobs.',
  },
];

/** Per-stage fields `stage_busy_seconds_total:<stage>` / `stage_idle_seconds_total:<stage>`. */
export const STAGE_COUNTERS: { prefix: string; name: string; help: string }[] = [
  {
    prefix: STAGE_METRIC_PREFIX.busySeconds,
    name: 'ppsd:pipeline_stage_busy_seconds_total',
    help: 'Seconds each pipeline stage spent computing.',
  },
  {
    prefix: STAGE_METRIC_PREFIX.idleSeconds,
    name: 'ppsd:pipeline_stage_idle_seconds_total',
    help: 'Seconds each pipeline stage sat idle (pipeline bubble) while a job ran.',
  },
];

/** Upper bounds of the `batch_size` histogram (sequences per batched step); +Inf follows. */
export const BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64];

/** The scheduler families, each rendered from the queue counts and the fresh heartbeats of a model. */
export const SCHEDULER_GAUGES = {
  running: {
    name: 'ppsd:num_requests_running',
    help: "Sequences in a worker engine's running batch (label worker); without a worker label, jobs a worker took that no fresh heartbeat accounts for.",
  },
  waiting: {
    name: 'ppsd:num_requests_waiting',
    help: 'Sequences a worker took that its engine has not admitted yet (label worker); without a worker label, jobs waiting in the model queue.',
  },
  kvUsage: {
    name: 'ppsd:kv_cache_usage_perc',
    help: "KV pool use of a worker's engine, 0..1 (used / budget bytes).",
  },
  maxBatch: {
    name: 'ppsd:max_num_seqs',
    help: "Most sequences one batched step of a worker's engine runs.",
  },
  batchSize: {
    name: 'ppsd:batch_size',
    help: 'Sequences per batched engine step.',
  },
} as const;

const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');

export function createMetrics(
  reg: Registry,
  deps: { queues: (model: string) => Queue; models: ModelRegistry },
) {
  const labelNames = ['model_name'] as const;
  const ttft = new Histogram({
    name: 'ppsd:time_to_first_token_seconds',
    help: 'Time from enqueue to the first verified token.',
    labelNames,
    buckets: LATENCY_BUCKETS,
    registers: [reg],
  });
  const itl = new Histogram({
    name: 'ppsd:inter_token_latency_seconds',
    help: 'Time between verified tokens.',
    labelNames,
    buckets: ITL_BUCKETS,
    registers: [reg],
  });
  const e2e = new Histogram({
    name: 'ppsd:e2e_request_latency_seconds',
    help: 'Time from enqueue to the end of the job.',
    labelNames,
    buckets: LATENCY_BUCKETS,
    registers: [reg],
  });
  const queueTime = new Histogram({
    name: 'ppsd:request_queue_time_seconds',
    help: 'Time from enqueue to a worker starting the job.',
    labelNames,
    buckets: LATENCY_BUCKETS,
    registers: [reg],
  });
  const counts = async (model: string) =>
    deps.queues(model).getJobCounts('waiting', 'active', 'prioritized', 'delayed');
  const http = new Counter({
    name: 'ppsd_http_requests_total',
    help: 'HTTP requests by route and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [reg],
  });
  const httpTime = new Histogram({
    name: 'ppsd_http_request_duration_seconds',
    help: 'Time to the response headers, by route.',
    labelNames: ['method', 'route'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [reg],
  });

  return {
    http,
    httpTime,
    /** Returns an observer for one relayed job, fed every entry as it is seen live. */
    jobObserver(model: string, enqueuedAt: number) {
      const labels = { model_name: model };
      const ms = (id: string) => Number(id.slice(0, id.indexOf('-')));
      let lastTokenMs: number | undefined;
      let done = false;
      return (entry: StreamEntry) => {
        if (done) return;
        const at = ms(entry.id);
        const ev: StreamEvent = entry.event;
        if (ev.type === 'start')
          queueTime.observe(labels, Math.max(0, ev.queuedMs ?? at - enqueuedAt) / 1000);
        else if (ev.type === 'tokens' && ev.ids.length > 0) {
          if (lastTokenMs === undefined) {
            ttft.observe(labels, Math.max(0, at - enqueuedAt) / 1000);
            for (let i = 1; i < ev.ids.length; i++) itl.observe(labels, 0);
          } else {
            const per = Math.max(0, at - lastTokenMs) / 1000 / ev.ids.length;
            for (let i = 0; i < ev.ids.length; i++) itl.observe(labels, per);
          }
          lastTokenMs = at;
        } else if (ev.type === 'done' || ev.type === 'error') {
          e2e.observe(labels, Math.max(0, at - enqueuedAt) / 1000);
          done = true;
        }
      };
    },

    /** Prometheus text: the registry plus the worker-maintained counters from Redis. */
    async render(redis: Redis): Promise<string> {
      const base = await reg.metrics();
      const models = deps.models.list().map((m) => m.id);
      const hashes = await Promise.all(
        models.map((m) => redis.hgetall(keys.metrics(m)).catch(() => ({}) as Record<string, string>)),
      );
      const now = Date.now();
      const loads = await Promise.all(
        models.map(async (m) => ({
          counts: await counts(m).catch(() => undefined),
          workers: freshHeartbeats(
            await redis.hgetall(keys.workers(m)).catch(() => ({}) as Record<string, string>),
            now,
          ),
        })),
      );
      let out = renderScheduler(models.map((m, i) => ({ model: m, ...loads[i], metrics: hashes[i] })));
      for (const c of WORKER_COUNTERS) {
        out += `# HELP ${c.name} ${c.help}\n# TYPE ${c.name} counter\n`;
        models.forEach((m, i) => {
          out += `${c.name}{model_name="${esc(m)}"} ${Number(hashes[i][c.field] ?? 0)}\n`;
        });
      }
      for (const c of STAGE_COUNTERS) {
        out += `# HELP ${c.name} ${c.help}\n# TYPE ${c.name} counter\n`;
        models.forEach((m, i) => {
          for (const [field, value] of Object.entries(hashes[i])) {
            if (!field.startsWith(c.prefix)) continue;
            const stage = field.slice(c.prefix.length);
            out += `${c.name}{model_name="${esc(m)}",stage="${esc(stage)}"} ${Number(value)}\n`;
          }
        });
      }
      return `${base.trimEnd()}\n${out}`;
    },
    contentType: reg.contentType,
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/** What /metrics reads of one model for the scheduler families. */
export interface ModelLoad {
  model: string;
  /** BullMQ job counts; undefined when the queue could not be read (its model-level series are left out). */
  counts: { [state: string]: number } | undefined;
  /** Fresh heartbeats of the model's workers. */
  workers: WorkerHeartbeat[];
  /** The model's metrics hash (`keys.metrics(model)`). */
  metrics: Record<string, string>;
}

/** Prometheus text of the scheduler families (see the file comment) for the given models. */
export function renderScheduler(loads: ModelLoad[]): string {
  const family = (f: { name: string; help: string }, type: 'gauge' | 'histogram') =>
    `# HELP ${f.name} ${f.help}\n# TYPE ${f.name} ${type}\n`;
  const line = (name: string, labels: Record<string, string>, value: number) =>
    `${name}{${Object.entries(labels)
      .map(([k, v]) => `${k}="${esc(v)}"`)
      .join(',')}} ${value}\n`;
  const reporting = (l: ModelLoad) =>
    l.workers.flatMap((w) => (w.scheduler ? [{ id: w.workerId, s: w.scheduler }] : []));

  const g = SCHEDULER_GAUGES;
  let running = family(g.running, 'gauge');
  let waiting = family(g.waiting, 'gauge');
  let kv = family(g.kvUsage, 'gauge');
  let maxBatch = family(g.maxBatch, 'gauge');
  let batch = family(g.batchSize, 'histogram');
  for (const l of loads) {
    const model = { model_name: l.model };
    const workers = reporting(l);
    if (l.counts) {
      const c = l.counts;
      const accounted = workers.reduce((n, w) => n + w.s.running + w.s.waiting, 0);
      running += line(g.running.name, model, Math.max(0, (c.active ?? 0) - accounted));
      waiting += line(g.waiting.name, model, (c.waiting ?? 0) + (c.prioritized ?? 0) + (c.delayed ?? 0));
    }
    for (const { id, s } of workers) {
      const labels = { ...model, worker: id };
      running += line(g.running.name, labels, s.running);
      waiting += line(g.waiting.name, labels, s.waiting);
      kv += line(
        g.kvUsage.name,
        labels,
        s.kvBudgetBytes > 0 ? Math.min(1, s.kvUsedBytes / s.kvBudgetBytes) : 0,
      );
      maxBatch += line(g.maxBatch.name, labels, s.maxBatch);
    }
    const steps = new Map<number, number>();
    for (const [field, value] of Object.entries(l.metrics)) {
      if (!field.startsWith(SCHEDULER_METRIC_PREFIX.batchSteps)) continue;
      const size = Number(field.slice(SCHEDULER_METRIC_PREFIX.batchSteps.length));
      const n = Number(value);
      if (Number.isInteger(size) && size >= 1 && Number.isFinite(n)) steps.set(size, n);
    }
    let count = 0;
    let sum = 0;
    for (const [size, n] of steps) {
      count += n;
      sum += size * n;
    }
    for (const le of BATCH_SIZE_BUCKETS) {
      let below = 0;
      for (const [size, n] of steps) if (size <= le) below += n;
      batch += line(`${g.batchSize.name}_bucket`, { ...model, le: String(le) }, below);
    }
    batch += line(`${g.batchSize.name}_bucket`, { ...model, le: '+Inf' }, count);
    batch += line(`${g.batchSize.name}_sum`, model, sum);
    batch += line(`${g.batchSize.name}_count`, model, count);
  }
  return running + waiting + kv + maxBatch + batch;
}
