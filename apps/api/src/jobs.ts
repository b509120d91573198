/**
 * The job lifecycle as the API sees it: admission (model, prompt tokens, tenant limits, idempotency,
 * enqueue), the job's public view (built from its event stream, BullMQ state as a fallback), and cancel.
 */
import { randomBytes, randomInt } from 'node:crypto';
import {
  ChatTemplateError,
  type DecoderName,
  EVENTS_TTL_SECONDS,
  type FinishReason,
  type GenerationJob,
  isTerminal,
  type JobKind,
  keys,
  type SamplingParams,
  type Speculation,
  type SpeculationSummary,
  type StreamEvent,
  type TokenLogprob,
  type TokenUsage,
  WORKER_STALE_MS,
  type WorkerHeartbeat,
} from '@ppsd/contract';
import type { Logger } from '@ppsd/contract/log';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Quota, Reservation } from './adapters/quota';
import type { JobEvents, StreamEntry } from './adapters/redis-events';
import type { ApiConfig } from './config';
import {
  forbidden,
  invalid,
  isRedisUnavailable,
  notFound,
  tooLong,
  tooMany,
  unavailable,
  withTimeout,
} from './errors';
import type { ModelInfo, ModelRegistry } from './models';

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

/** What the API keeps about a job (the BullMQ payload lives in its queue; this is for lookups by id). */
export interface JobMeta {
  id: string;
  tenant: string;
  model: string;
  kind: JobKind;
  createdAt: number;
  promptTokens: number;
  maxTokens: number;
  reservedTokens: number;
  speculation: Speculation;
  idempotencyKey?: string;
  /** The request's `user` (OpenAI's end-user id): kept with the job, never read by generation. */
  user?: string;
}

/** Job metadata key; shares the job's hash tag with its events. */
export const jobMetaKey = (jobId: string) => `ppsd:{job:${jobId}}:meta`;

export const newJobId = () => `job_${randomBytes(12).toString('base64url').replace(/[-_]/g, 'x')}`;

export interface AdmitInput {
  tenant: string;
  model?: string;
  kind: JobKind;
  /** The prompt text the engine completes, or how to render it for the resolved model (chat, summarize). */
  prompt: string | ((model: ModelInfo) => string);
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  logitBias?: Record<string, number>;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Token logprobs with this many alternatives (carried on the job's token events). */
  logprobs?: number;
  speculation?: Speculation;
  idempotencyKey?: string;
  user?: string;
}

export interface Admitted {
  meta: JobMeta;
  model: ModelInfo;
  /** False when an Idempotency-Key returned an existing job. */
  created: boolean;
}

export interface JobView {
  id: string;
  object: 'job';
  status: JobStatus;
  model: string;
  kind: JobKind;
  created: number;
  attempt: number;
  text: string;
  finish_reason: FinishReason | null;
  usage: TokenUsage;
  speculation: SpeculationSummary | null;
  error: { message: string; code: string } | null;
  last_event_id: string | null;
}

export interface JobServiceDeps {
  redis: Redis;
  queues: (model: string) => Queue;
  models: ModelRegistry;
  config: ApiConfig;
  events: JobEvents;
  quota: Quota;
  clock: () => number;
  /** Models a tenant may use (undefined = all served models). */
  allowedModels?: (tenant: string) => Promise<string[] | undefined>;
}

/**
 * Text, token count and token logprobs from a job's entries, each token index counted once (retries
 * never duplicate).
 */
export function accumulate(entries: StreamEntry[]) {
  let text = '';
  let next = 0;
  let attempt = 0;
  let started = false;
  let terminal: StreamEvent | undefined;
  const logprobs: TokenLogprob[] = [];
  for (const { event } of entries) {
    attempt = Math.max(attempt, event.attempt);
    if (event.type === 'start') started = true;
    else if (event.type === 'tokens') {
      if (event.index + event.ids.length <= next) continue;
      text += event.text;
      logprobs.push(...(event.logprobs ?? []).slice(Math.max(0, next - event.index)));
      next = event.index + event.ids.length;
    } else if (isTerminal(event)) terminal = event;
  }
  return { text, completionTokens: next, attempt, started, terminal, logprobs };
}

export function statusOf(terminal: StreamEvent | undefined): JobStatus | undefined {
  if (!terminal) return undefined;
  if (terminal.type === 'done')
    return terminal.result.finishReason === 'cancelled' ? 'cancelled' : 'completed';
  if (terminal.type === 'error') return terminal.finishReason === 'cancelled' ? 'cancelled' : 'failed';
  return undefined;
}

/** The prompt for `model`; a chat template that refuses the messages is the client's 400. */
function renderFor(model: ModelInfo, prompt: AdmitInput['prompt']): string {
  if (typeof prompt === 'string') return prompt;
  try {
    return prompt(model);
  } catch (err) {
    if (err instanceof ChatTemplateError) throw invalid(err.message, 'messages');
    throw err;
  }
}

/** A request measured against its model (jobs.ts admit). */
interface SizedRequest {
  prompt: string;
  promptTokens: number;
  maxTokens: number;
}

const decoderOf = (s: Speculation): DecoderName => (typeof s === 'object' ? s.decoder : 'ar');

export function createJobService(d: JobServiceDeps) {
  const { redis, config } = d;
  const t = <T>(p: Promise<T>, what: string) => withTimeout(p, config.redisTimeoutMs, what);

  async function getMeta(tenant: string, jobId: string): Promise<JobMeta> {
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(jobId))
      throw notFound(`No job found with id '${jobId}'.`, 'job_not_found', 'id');
    const raw = await redis.get(jobMetaKey(jobId));
    const meta = raw ? (JSON.parse(raw) as JobMeta) : undefined;
    // Another tenant's job answers exactly like a missing one.
    if (!meta || meta.tenant !== tenant)
      throw notFound(`No job found with id '${jobId}'.`, 'job_not_found', 'id');
    return meta;
  }

  function resolveModel(id: string | undefined): ModelInfo {
    const list = d.models.list();
    const model = id === undefined ? list[0] : d.models.get(id);
    if (!model) {
      throw notFound(
        id === undefined ? 'No model is served.' : `The model '${id}' does not exist.`,
        'model_not_found',
        'model',
      );
    }
    return model;
  }

  /** The deepest pipeline the model's fresh, ready workers run; undefined when none says. */
  async function workerMaxStages(model: string): Promise<number | undefined> {
    const now = d.clock();
    const beats = Object.values(await t(redis.hgetall(keys.workers(model)), 'workers')).flatMap((v) => {
      try {
        const h = JSON.parse(v) as WorkerHeartbeat;
        return h.ready && now - h.at <= WORKER_STALE_MS && typeof h.maxStages === 'number'
          ? [h.maxStages]
          : [];
      } catch {
        return [];
      }
    });
    return beats.length ? Math.max(...beats) : undefined;
  }

  /**
   * What the model's workers cannot run is a 400 here, not a failed job: `speculation.stages` above
   * every ready worker's maxStages (with no worker up, the worker that takes the job decides), and
   * logit_bias ids outside the vocabulary.
   */
  async function checkRunnable(model: ModelInfo, input: AdmitInput): Promise<void> {
    const stages = typeof input.speculation === 'object' ? input.speculation.stages : undefined;
    if (stages !== undefined) {
      const max = await workerMaxStages(model.id);
      if (max !== undefined && stages > max) {
        throw invalid(
          `speculation.stages ${stages}: the workers of '${model.id}' run pipelines of at most ${max} stages (one per device)`,
          'speculation.stages',
        );
      }
    }
    const vocab = model.vocabSize;
    const outside = Object.keys(input.logitBias ?? {}).find(
      (id) => vocab !== undefined && Number(id) >= vocab,
    );
    if (outside !== undefined) {
      throw invalid(
        `logit_bias: token id ${outside} is outside the vocabulary (0..${vocab! - 1})`,
        'logit_bias',
      );
    }
  }

  /** The request sized against the model: its prompt, prompt tokens and max tokens, or the 4xx that says why not. */
  async function sizeRequest(model: ModelInfo, input: AdmitInput): Promise<SizedRequest> {
    const prompt = renderFor(model, input.prompt);
    if (prompt.length > model.maxPromptChars) {
      throw tooLong(
        `The prompt has ${prompt.length} characters; no text that long fits this model's context of ${model.maxContext} tokens.`,
      );
    }
    const promptTokens = await model.countPromptTokens(prompt);
    if (promptTokens < 1) throw invalid('The prompt is empty.', 'prompt');
    if (config.maxPromptTokens > 0 && promptTokens > config.maxPromptTokens) {
      throw tooLong(
        `The prompt has ${promptTokens} tokens; this service accepts at most ${config.maxPromptTokens}.`,
      );
    }
    const room = model.maxContext - promptTokens;
    if (room < 1) {
      throw tooLong(
        `This model's maximum context length is ${model.maxContext} tokens; the prompt has ${promptTokens}.`,
      );
    }
    const maxTokens =
      input.maxTokens ??
      (input.kind === 'completion' ? Math.min(16, room) : Math.min(config.defaultMaxTokens, room));
    if (promptTokens + maxTokens > model.maxContext) {
      throw tooLong(
        `This model's maximum context length is ${model.maxContext} tokens. However, you requested ${promptTokens + maxTokens} tokens (${promptTokens} in the prompt, ${maxTokens} for the completion). Please reduce the prompt or max_tokens.`,
        'max_tokens',
      );
    }
    if (input.stop?.some((s) => s.length === 0)) throw invalid('stop strings must not be empty', 'stop');
    return { prompt, promptTokens, maxTokens };
  }

  /** A 503 while the model's queue already holds `queueMaxWaiting` jobs (0: no limit). */
  async function checkBacklog(model: ModelInfo, queue: Queue<GenerationJob>): Promise<void> {
    if (config.queueMaxWaiting <= 0) return;
    const waiting = await t(queue.getWaitingCount(), 'queue length');
    if (waiting >= config.queueMaxWaiting) {
      throw unavailable(
        `The model '${model.id}' is overloaded; retry later.`,
        'overloaded',
        config.retryAfterSeconds,
      );
    }
  }

  /** The 429 for a refused reservation: the tenant's unfinished-job limit or its token quota. */
  function refusal(r: Extract<Reservation, { kind: 'queue' | 'quota' }>): Error {
    if (r.kind === 'queue') {
      return tooMany(
        `Too many unfinished jobs for this tenant (limit ${r.limit}); retry when some have finished.`,
        'tenant_queue_limit',
        config.retryAfterSeconds,
      );
    }
    return tooMany(
      'Token quota exceeded for this tenant in the current period.',
      'quota_exceeded',
      r.retryAfterMs > 0 ? r.retryAfterMs / 1000 : config.retryAfterSeconds,
    );
  }

  /** The job's meta (what the API answers about it) and the job itself (what the worker runs). */
  function describeJob(
    jobId: string,
    model: ModelInfo,
    input: AdmitInput,
    sized: SizedRequest,
    now: number,
  ): { meta: JobMeta; job: GenerationJob } {
    const { prompt, promptTokens, maxTokens } = sized;
    const reservedTokens = promptTokens + maxTokens;
    const speculation = input.speculation ?? 'auto';
    const meta: JobMeta = {
      id: jobId,
      tenant: input.tenant,
      model: model.id,
      kind: input.kind,
      createdAt: now,
      promptTokens,
      maxTokens,
      reservedTokens,
      speculation,
      ...(input.idempotencyKey ? { idempotencyKey: input.idempotencyKey } : {}),
      ...(input.user ? { user: input.user } : {}),
    };
    const processors: Partial<SamplingParams> = {
      ...(input.logitBias && Object.keys(input.logitBias).length ? { logitBias: input.logitBias } : {}),
      ...(input.presencePenalty ? { presencePenalty: input.presencePenalty } : {}),
      ...(input.frequencyPenalty ? { frequencyPenalty: input.frequencyPenalty } : {}),
      ...(input.logprobs !== undefined ? { logprobs: input.logprobs } : {}),
    };
    const job: GenerationJob = {
      id: jobId,
      tenant: input.tenant,
      model: model.id,
      kind: input.kind,
      prompt,
      promptTokens,
      params: {
        maxTokens,
        temperature: input.temperature ?? 1,
        topP: input.topP ?? 1,
        seed: input.seed ?? randomInt(0, 2 ** 31 - 1),
        stop: input.stop ?? [],
        ...processors,
      },
      speculation,
      reservedTokens,
      enqueuedAt: now,
    };
    return { meta, job };
  }

  /** Stores the meta and enqueues the job; on failure, releases the reservation and leaves nothing behind. */
  async function enqueue(queue: Queue<GenerationJob>, meta: JobMeta, job: GenerationJob): Promise<void> {
    try {
      await t(redis.set(jobMetaKey(job.id), JSON.stringify(meta), 'EX', config.jobTtlSeconds), 'job meta');
      await t(
        queue.add('generate', job, {
          jobId: job.id,
          attempts: config.jobAttempts,
          backoff: { type: 'fixed', delay: 500 },
          removeOnComplete: { age: EVENTS_TTL_SECONDS },
          removeOnFail: { age: EVENTS_TTL_SECONDS },
        }),
        'enqueue',
      );
    } catch (err) {
      await d.quota.release(meta.tenant, job.id, meta.idempotencyKey).catch(() => undefined);
      await redis.del(jobMetaKey(job.id)).catch(() => undefined);
      if (isRedisUnavailable(err)) throw unavailable('The job queue is unavailable; retry later.');
      throw err;
    }
  }

  /**
   * Admits a request: the tenant may use the model, the request fits it, the queue has room, the
   * tenant's quota reserves its tokens; then the job is enqueued (or, for a repeated idempotency key,
   * the existing job is returned). `log`: the request's logger; the job's id is logged with it.
   */
  async function admit(input: AdmitInput, log?: Logger): Promise<Admitted> {
    const model = resolveModel(input.model);
    const allowed = await d.allowedModels?.(input.tenant);
    if (allowed && !allowed.includes(model.id)) {
      throw forbidden(
        `This API key's tenant may not use the model '${model.id}'.`,
        'model_not_allowed',
        'model',
      );
    }
    const sized = await sizeRequest(model, input);
    await checkRunnable(model, input);
    const queue = d.queues(model.id);
    await checkBacklog(model, queue);

    const now = d.clock();
    const jobId = newJobId();
    const r = await t(
      d.quota.reserve({
        tenant: input.tenant,
        jobId,
        tokens: sized.promptTokens + sized.maxTokens,
        idempotencyKey: input.idempotencyKey,
        now,
      }),
      'quota',
    );
    if (r.kind === 'idem') {
      const raw = await redis.get(jobMetaKey(r.jobId));
      if (raw) {
        log?.info({ jobId: r.jobId, model: model.id }, 'idempotent repeat: existing job');
        return { meta: JSON.parse(raw) as JobMeta, model, created: false };
      }
      // The mapping outlived its job: drop it and admit afresh.
      await redis.del(keys.idempotency(input.tenant, input.idempotencyKey!));
      return admit(input, log);
    }
    if (r.kind !== 'ok') throw refusal(r);

    const { meta, job } = describeJob(jobId, model, input, sized, now);
    await enqueue(queue, meta, job);
    const { promptTokens, maxTokens } = sized;
    log?.info(
      { jobId, model: model.id, kind: input.kind, promptTokens, maxTokens, speculation: meta.speculation },
      'job enqueued',
    );
    return { meta, model, created: true };
  }

  /** Terminal entry for a job BullMQ no longer holds as waiting/active but whose stream never ended. */
  async function lostEnd(meta: JobMeta): Promise<StreamEntry | undefined> {
    const state = await d.queues(meta.model).getJobState(meta.id);
    if (state !== 'failed' && state !== 'unknown' && state !== 'completed') return undefined;
    const cancelled = (await redis.exists(keys.jobCancelled(meta.id))) === 1;
    const entries = await d.events.read(meta.id);
    const acc = accumulate(entries);
    if (acc.terminal) return entries[entries.length - 1];
    return d.events.end(meta.id, {
      type: 'error',
      attempt: acc.attempt,
      message: cancelled ? 'The job was cancelled.' : 'The job ended without a result (its worker was lost).',
      code: cancelled ? 'cancelled' : 'worker_lost',
      finishReason: cancelled ? 'cancelled' : 'error',
    });
  }

  async function view(meta: JobMeta): Promise<JobView> {
    let entries = await t(d.events.read(meta.id), 'job events');
    let acc = accumulate(entries);
    let status = statusOf(acc.terminal);
    if (!status) {
      const state = await t(d.queues(meta.model).getJobState(meta.id), 'job state');
      if (state === 'completed' || state === 'failed') {
        // The worker writes the terminal event before BullMQ moves the job, so a job that ended between
        // the two reads above has it now: read again rather than report an end without its result.
        entries = await t(d.events.read(meta.id), 'job events');
        acc = accumulate(entries);
        status = statusOf(acc.terminal) ?? state;
      } else if (state === 'active') status = 'running';
      else if (state === 'unknown') {
        status = (await redis.exists(keys.jobCancelled(meta.id))) ? 'cancelled' : 'failed';
      } else status = 'queued'; // waiting, delayed (a retry after a lost attempt), prioritized
    }
    const term = acc.terminal;
    const result = term?.type === 'done' ? term.result : undefined;
    const completion = result?.usage.completion_tokens ?? acc.completionTokens;
    const prompt = result?.usage.prompt_tokens ?? meta.promptTokens;
    return {
      id: meta.id,
      object: 'job',
      status,
      model: meta.model,
      kind: meta.kind,
      created: Math.floor(meta.createdAt / 1000),
      attempt: acc.attempt,
      text: result?.text ?? acc.text,
      finish_reason: result?.finishReason ?? (term?.type === 'error' ? term.finishReason : null),
      usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
      speculation: result?.speculation ?? null,
      error: term?.type === 'error' ? { message: term.message, code: term.code } : null,
      last_event_id: entries.length ? entries[entries.length - 1].id : null,
    };
  }

  /**
   * Cancels a job: sets the durable flag and broadcasts on keys.cancelChannel (the owning worker stops
   * within one decoding step and ends the stream). A job still waiting in its queue is removed and ended
   * here: terminal event, one usage record, reservation released.
   */
  async function cancel(meta: JobMeta): Promise<void> {
    await t(
      redis
        .multi()
        .set(keys.jobCancelled(meta.id), '1', 'EX', EVENTS_TTL_SECONDS)
        .publish(keys.cancelChannel, meta.id)
        .exec(),
      'cancel',
    );
    const queue = d.queues(meta.model);
    const state = await t(queue.getJobState(meta.id), 'job state');
    if (state !== 'waiting' && state !== 'delayed' && state !== 'prioritized' && state !== 'waiting-children')
      return;
    const job = await queue.getJob(meta.id);
    if ((await queue.remove(meta.id)) !== 1) return; // a worker took it meanwhile: it ends the job
    const entries = await d.events.read(meta.id);
    const acc = accumulate(entries);
    if (acc.terminal) return;
    const attempt = job?.attemptsStarted ?? acc.attempt;
    const now = d.clock();
    await d.quota.recordEnd({
      tenant: meta.tenant,
      jobId: meta.id,
      attempt,
      model: meta.model,
      status: 'cancelled',
      finishReason: 'cancelled',
      promptTokens: 0,
      completionTokens: 0,
      draftTokensProposed: 0,
      draftTokensAccepted: 0,
      decoder: decoderOf(meta.speculation),
      wallMs: 0,
      deviceSeconds: 0,
      endedAt: now,
    });
    await d.events.end(meta.id, {
      type: 'error',
      attempt,
      message: 'The job was cancelled before it started.',
      code: 'cancelled',
      finishReason: 'cancelled',
    });
  }

  return { admit, getMeta, view, cancel, lostEnd, resolveModel, isTerminal };
}

export type JobService = ReturnType<typeof createJobService>;
