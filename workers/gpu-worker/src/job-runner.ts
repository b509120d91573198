/**
 * One attempt of one job: the BullMQ processor.
 *
 * - Reads the job's progress first (tokens and text already in its stream), so a retried attempt
 *   (stalled worker, failure, hand-back) regenerates the same text with the same seed and publishes only
 *   token indexes the stream lacks. Every write is an idempotent script, so ioredis re-sending a command
 *   after a reconnect duplicates nothing either.
 * - Publishes each batch of verified tokens as it comes: XADD to keys.jobEvents (MAXLEN ~) plus a
 *   PUBLISH on keys.jobWake, in order, through a per-job ordered queue that never blocks the engine (pending token batches merge).
 *   The writes of all the processor's jobs that are ready in one event-loop turn share one script call
 *   (`EventCoalescer`): a batched step's tokens cost one Redis command, not one per job.
 * - The attempt's time limit (`jobTimeoutMs`) runs from the engine's admission (`onAdmitted`): a job
 *   waiting inside the engine for a batch slot or KV memory is not timed (its BullMQ lock is renewed
 *   meanwhile, as for every active job).
 * - On every end state writes one UsageRecord for the attempt; on the final attempt also settles the
 *   tenant's quota reservation and appends the terminal event (which expires the stream after
 *   EVENTS_TTL_SECONDS). Usage + settlement share the tenant slot (one script); the terminal event and
 *   the stream's expiry share the job slot (another); both are idempotent.
 * - Logs through a child of `deps.log` per attempt: jobId, tenant and attempt on every line.
 */
import {
  BLOCK_DECODERS,
  type DecoderName,
  type FinishReason,
  type GenerationJob,
  type JobResult,
  type JobScripts,
  keys,
  lastSegments,
  METRIC_FIELDS,
  PIPELINE_DECODERS,
  type PublishKind,
  progressKeys,
  publishJobEvent,
  type Speculation,
  STAGE_METRIC_PREFIX,
  type StreamEvent,
  settleUsage,
  type UsageRecord,
  withJobScripts,
} from '@ppsd/contract';
import type { Logger } from '@ppsd/contract/log';
import type { SpeculationStats } from '@ppsd/engine';
import { DelayedError, type Job, UnrecoverableError } from 'bullmq';
import type { Redis } from 'ioredis';
import type { CancelRegistry } from './cancel';
import { type DraftStats, draftStats, type WorkerEngine, type WorkerTokenEvent } from './engine-types';
import { EventCoalescer } from './event-coalescer';

export interface RunnerDeps {
  redis: Redis;
  engine: WorkerEngine;
  workerId: string;
  model: string;
  defaultDecoder: DecoderName;
  /** Decoders a job may ask for (the engine's names; unknown ones are rejected at once). */
  decoders: readonly string[];
  /**
   * Makes sure the engine can run `decoder` (opened and warmed on first use); throws JobRejectedError
   * ('unsupported_decoder') when it cannot.
   */
  ensureDecoder?: (decoder: DecoderName, log: Logger) => Promise<void>;
  /** Pipeline stages (devices) a generation holds, for device seconds. */
  stages: number;
  /** The deepest pipeline a job may ask for (`speculation.stages`; the engine's maxStages). */
  maxStages?: number;
  cancels: CancelRegistry;
  /** The worker's logger (workerId); each attempt logs through a child with jobId, tenant, attempt. */
  log: Logger;
  /** When the worker drains past its deadline, in-flight jobs are handed back to the queue. */
  handBack?: () => boolean;
  /** Hard limit on one attempt (ms); 0 = none. */
  jobTimeoutMs?: number;
  /** Called when the number of jobs in flight changes (heartbeat, scale-in protection). */
  onBusy?: (delta: number) => void;
  /** Fault tests only (PPSD_FAULT_TOKEN_DELAY_MS): pause after each token batch to widen the mid-job window. */
  tokenDelayMs?: number;
}

/** The job cannot run as asked (unknown decoder, prompt too long): fail it without retrying. */
export class JobRejectedError extends Error {
  override name = 'JobRejectedError';
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** The request leaves the decoder to the worker: the engine then adapts it to load. */
const isAuto = (spec: Speculation | undefined): boolean => spec === undefined || spec === 'auto';

/** Maps the request's `speculation` to a decoder this worker runs, or throws JobRejectedError. */
export function resolveDecoder(
  spec: Speculation | undefined,
  defaultDecoder: DecoderName,
  supported: readonly string[],
): DecoderName {
  let want: DecoderName;
  if (spec === undefined || spec === 'auto')
    want = supported.includes(defaultDecoder) ? defaultDecoder : 'ar';
  else if (spec === 'off') want = 'ar';
  else if (typeof spec === 'object' && spec && typeof spec.decoder === 'string') want = spec.decoder;
  else
    throw new JobRejectedError(`invalid speculation setting ${JSON.stringify(spec)}`, 'invalid_speculation');
  if (!supported.includes(want)) {
    throw new JobRejectedError(
      `decoder '${want}' is not available on this worker (available: ${supported.join(', ')})`,
      'unsupported_decoder',
    );
  }
  return want;
}

const retryReason = (job: Job): string =>
  job.failedReason
    ? `the last attempt failed: ${job.failedReason}`
    : 'the worker running this job stopped answering';
/** What a job's `speculation` asks of the engine: the decoder and its per-request depth / block length. */
export interface ResolvedSpeculation {
  decoder: DecoderName;
  stages?: number;
  draftLength?: number;
}

/**
 * `resolveDecoder` plus the per-request settings, checked against what this worker runs: `stages` only
 * for ppsd / spd and at most `maxStages`, `draftLength` only for eesd / dv. Throws JobRejectedError.
 */
export function resolveSpeculation(
  spec: Speculation | undefined,
  defaultDecoder: DecoderName,
  supported: readonly string[],
  maxStages: number,
): ResolvedSpeculation {
  const decoder = resolveDecoder(spec, defaultDecoder, supported);
  if (typeof spec !== 'object') return { decoder };
  const { stages, draftLength } = spec;
  if (stages !== undefined) {
    if (!PIPELINE_DECODERS.includes(decoder))
      throw new JobRejectedError(
        `speculation.stages applies to ppsd and spd, not ${decoder}`,
        'invalid_speculation',
      );
    if (!(Number.isInteger(stages) && stages >= 2 && stages <= maxStages))
      throw new JobRejectedError(
        `speculation.stages ${stages}: this worker runs pipelines of 2 to ${maxStages} stages`,
        'unsupported_stages',
      );
  }
  if (draftLength !== undefined && !BLOCK_DECODERS.includes(decoder))
    throw new JobRejectedError(
      `speculation.draftLength applies to eesd and dv, not ${decoder}`,
      'invalid_speculation',
    );
  return { decoder, stages, draftLength };
}

/** The attempt number of the current run: BullMQ counts starts (stalled restarts included). */
export const attemptOf = (job: Job): number =>
  Math.max(job.attemptsStarted ?? 0, (job.attemptsMade ?? 0) + 1, 1);

type ScriptedRedis = Redis & JobScripts;
type GenerationOutcome = Awaited<ReturnType<WorkerEngine['generate']>>;

/** One attempt of one job: what each step of `processJob` reads. */
interface AttemptContext {
  deps: RunnerDeps;
  redis: ScriptedRedis;
  job: Job<GenerationJob, JobResult>;
  data: GenerationJob;
  jobId: string;
  attempt: number;
  /** This attempt's logger: jobId, tenant and attempt on every line. */
  log: Logger;
  /** ms epoch the attempt began (wall time, queue time). */
  started: number;
  publisher: EventPublisher;
  publish: (ev: StreamEvent, kind: PublishKind, tokenEnd?: number, charsEnd?: number) => Promise<void>;
}

/** What the job's stream already holds from earlier attempts (`progressKeys.jobProgress`). */
export interface JobProgress {
  /** Token indexes published (the next one to publish). */
  tokens: number;
  /** Text characters published. */
  chars: number;
  /** The stream already has its terminal event. */
  done: boolean;
}

/** How an attempt ends, as `finishAttempt` records it. */
interface AttemptEnd {
  kind: 'completed' | 'cancelled' | 'error' | 'timeout' | 'handback';
  completionTokens: number;
  promptTokens?: number;
  stats: SpeculationStats | undefined;
  /** No further attempt follows: settle the reservation and end the stream. */
  final: boolean;
  err?: Error;
  text?: string;
  finishReason?: FinishReason;
}

export function createProcessor(
  deps: RunnerDeps,
): (job: Job<GenerationJob, JobResult>, token?: string) => Promise<JobResult> {
  const redis = withJobScripts(deps.redis);
  // one per processor (= per worker process): the jobs it runs at once are the ones a step batches
  const coalescer = new EventCoalescer(redis);

  return async function processJob(job, token) {
    const ctx = openAttempt(deps, redis, coalescer, job);
    const progress = await readProgress(redis, ctx.jobId);
    if (progress.done) return replayTerminal(redis, keys.jobEvents(ctx.jobId), ctx.jobId, ctx.log);
    if (ctx.attempt > 1) announceRetry(ctx);

    const ac = deps.cancels.register(ctx.jobId, (m) => ctx.log.info(m));
    deps.onBusy?.(1);
    const deadline = new AttemptDeadline(deps.jobTimeoutMs ?? 0, ac);
    try {
      if (await deps.cancels.isCancelled(ctx.jobId)) ac.abort(new Error('cancelled'));
      const plan = await resolvePlan(ctx);
      announceStart(ctx, plan.decoder, progress.tokens);
      const sink = tokenPublisher(ctx, progress);
      // the time limit runs from the engine's admission, not while the job waits for a batch slot
      const result = await generate(ctx, plan, sink, ac.signal, () => deadline.start());
      // the decoder that actually ran ('auto' picks one at admission)
      return await settle(ctx, result.stats?.decoder ?? plan.decoder, result, deadline.timedOut, token);
    } finally {
      deadline.clear();
      deps.cancels.release(ctx.jobId, ac);
      deps.onBusy?.(-1);
    }
  };
}

/**
 * The attempt's context and its publication queue: strictly ordered, idempotent, never blocks the
 * engine. Token batches that pile up while a write is in flight are merged into one event (contiguous
 * indexes), so a slow Redis (AOF fsync always, a reconnect) costs fewer round trips, not a backlog.
 * The queue's writes go through the processor's coalescer, together with the other jobs' writes.
 */
function openAttempt(
  deps: RunnerDeps,
  redis: ScriptedRedis,
  coalescer: EventCoalescer,
  job: Job<GenerationJob, JobResult>,
): AttemptContext {
  const data = job.data;
  const jobId = job.id ?? data.id;
  const attempt = attemptOf(job);
  const publisher = new EventPublisher((item) =>
    coalescer.write({
      jobId,
      event: item.ev,
      kind: item.kind,
      attempt,
      tokenEnd: item.tokenEnd,
      charsEnd: item.charsEnd,
    }),
  );
  return {
    deps,
    redis,
    job,
    data,
    jobId,
    attempt,
    log: deps.log.child({ jobId, tenant: data.tenant, attempt }),
    started: Date.now(),
    publisher,
    publish: (ev, kind, tokenEnd = 0, charsEnd = 0) => publisher.push({ ev, kind, tokenEnd, charsEnd }),
  };
}

export async function readProgress(redis: Redis, jobId: string): Promise<JobProgress> {
  const [tokens, chars, done] = await redis.hmget(progressKeys.jobProgress(jobId), 'tokens', 'chars', 'done');
  return { tokens: Number(tokens ?? 0), chars: Number(chars ?? 0), done: Boolean(done) };
}

/**
 * The previous attempt ended without a terminal event (its worker died, hung or failed): say so before
 * this attempt starts, so a waiting client knows why the tokens paused.
 */
function announceRetry(ctx: AttemptContext): void {
  void ctx.publish({ type: 'retry', attempt: ctx.attempt - 1, reason: retryReason(ctx.job) }, 'retry');
}

/**
 * The decoder and per-request settings this worker runs the job with (the decoder opened on first use).
 * One it cannot run ends the job at once: usage recorded, stream ended, never retried.
 */
async function resolvePlan(ctx: AttemptContext): Promise<ResolvedSpeculation> {
  const { deps } = ctx;
  let decoder: DecoderName = 'ar';
  try {
    const plan = resolveSpeculation(
      ctx.data.speculation,
      deps.defaultDecoder,
      deps.decoders,
      deps.maxStages ?? 2,
    );
    decoder = plan.decoder;
    await deps.ensureDecoder?.(decoder, ctx.log);
    return plan;
  } catch (err) {
    await finishAttempt(ctx, decoder, {
      kind: 'error',
      err: err as Error,
      completionTokens: 0,
      stats: undefined,
      final: true,
    });
    throw new UnrecoverableError((err as Error).message);
  }
}

function announceStart(ctx: AttemptContext, decoder: DecoderName, publishedTokens: number): void {
  const { data, started } = ctx;
  void ctx.publish(
    {
      type: 'start',
      attempt: ctx.attempt,
      workerId: ctx.deps.workerId,
      decoder,
      queuedMs: Math.max(0, started - (data.enqueuedAt || started)),
    },
    'start',
  );
  ctx.log.info(
    { decoder, maxTokens: data.params.maxTokens, publishedTokens },
    `job ${ctx.jobId} attempt ${ctx.attempt}: ${decoder}, max_tokens ${data.params.maxTokens}` +
      (publishedTokens ? `, ${publishedTokens} tokens already published` : ''),
  );
}

/**
 * The attempt's time limit (`jobTimeoutMs`, 0 = none): armed once, when the engine admits the sequence;
 * when it fires the generation is aborted and `timedOut` says why.
 */
export class AttemptDeadline {
  timedOut = false;
  private timer: NodeJS.Timeout | undefined;
  private armed = false;

  constructor(
    private readonly ms: number,
    private readonly ac: AbortController,
  ) {}

  start(): void {
    if (this.armed || !(this.ms > 0)) return;
    this.armed = true;
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.ac.abort(new Error('timed out'));
    }, this.ms);
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** The engine's token callback for one attempt, and how many tokens it has verified so far. */
interface TokenSink {
  onTokens: (ev: WorkerTokenEvent) => void | Promise<void>;
  verified: () => number;
}

/**
 * Publishes each batch of verified tokens the stream lacks (a retried attempt regenerates the same
 * tokens and skips the indexes and text an earlier attempt already published).
 */
function tokenPublisher(ctx: AttemptContext, progress: JobProgress): TokenSink {
  const { attempt } = ctx;
  const publishedTokens = progress.tokens;
  let publishedChars = progress.chars;
  let fullText = '';
  let verified = 0;
  const delay = ctx.deps.tokenDelayMs ?? 0;
  const onTokens = (ev: WorkerTokenEvent): void | Promise<void> => {
    fullText += ev.text;
    const end = ev.index + ev.ids.length;
    verified = Math.max(verified, end);
    if (end <= publishedTokens) return; // an earlier attempt already published these
    const skip = Math.max(0, publishedTokens - ev.index);
    const text = fullText.length > publishedChars ? fullText.slice(publishedChars) : '';
    publishedChars = Math.max(publishedChars, fullText.length);
    const logprobs = ev.logprobs && { logprobs: ev.logprobs.slice(skip) };
    // marks for exactly `text` (a retried attempt publishes only the tail the stream lacks)
    const segments = text.length <= ev.text.length ? lastSegments(ev.segments, text.length) : undefined;
    void ctx.publish(
      {
        type: 'tokens',
        attempt,
        index: ev.index + skip,
        ids: ev.ids.slice(skip),
        text,
        segments,
        ...logprobs,
      },
      'tokens',
      end,
      publishedChars,
    );
    if (delay > 0) return new Promise((r) => setTimeout(r, delay));
  };
  return { onTokens, verified: () => verified };
}

/** The engine's generation parameters for the job's sampling settings. */
function engineParams(p: GenerationJob['params']) {
  return {
    maxTokens: p.maxTokens,
    temperature: p.temperature,
    topP: p.topP,
    seed: p.seed,
    stop: p.stop ?? [],
    logitBias: p.logitBias,
    presencePenalty: p.presencePenalty,
    frequencyPenalty: p.frequencyPenalty,
    logprobs: p.logprobs,
  };
}

/**
 * Runs the generation; once it returns, everything it published is written. A generation that throws
 * is recorded (usage, and on the final attempt settlement and the `error` event) and rethrown.
 */
async function generate(
  ctx: AttemptContext,
  plan: ResolvedSpeculation,
  sink: TokenSink,
  signal: AbortSignal,
  onAdmitted: () => void,
): Promise<GenerationOutcome> {
  let result: GenerationOutcome;
  try {
    result = await ctx.deps.engine.generate(
      ctx.data.prompt,
      {
        ...engineParams(ctx.data.params),
        ...plan,
        // 'auto' (or none) lets the engine choose by load: speculate alone, batch plain AR when busy
        decoder: isAuto(ctx.data.speculation) ? 'auto' : plan.decoder,
        signal,
        onAdmitted,
      },
      sink.onTokens,
    );
  } catch (err) {
    return await failGeneration(ctx, plan.decoder, err as Error, sink.verified());
  }
  await ctx.publisher.idle();
  if (ctx.publisher.error) throw ctx.publisher.error;
  return result;
}

async function failGeneration(
  ctx: AttemptContext,
  decoder: DecoderName,
  err: Error,
  verified: number,
): Promise<never> {
  const { job } = ctx;
  // the engine refuses settings it cannot run with a RangeError: the same on every attempt
  const rejected =
    err.name === 'PromptTooLongError' || err instanceof JobRejectedError || err instanceof RangeError;
  const final = rejected || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
  await ctx.publisher.idle();
  await finishAttempt(ctx, decoder, {
    kind: 'error',
    err,
    completionTokens: verified,
    stats: undefined,
    final,
  });
  if (final) throw new UnrecoverableError(err.message);
  throw err;
}

/**
 * Ends an attempt whose generation returned: handed back (drain deadline passed, another worker
 * continues it), timed out, or done (completed or cancelled).
 */
async function settle(
  ctx: AttemptContext,
  decoder: DecoderName,
  result: GenerationOutcome,
  timedOut: boolean,
  token: string | undefined,
): Promise<JobResult> {
  const { deps, jobId } = ctx;
  const aborted = result.finishReason === 'cancelled';
  const ran = { completionTokens: result.completionTokens, stats: result.stats };
  if (aborted && deps.handBack?.() && !timedOut && !(await deps.cancels.isCancelled(jobId))) {
    // Drain deadline passed: hand the job back so another worker continues it (nothing is duplicated).
    await finishAttempt(ctx, decoder, { kind: 'handback', ...ran, final: false });
    await ctx.job.moveToDelayed(Date.now(), token);
    throw new DelayedError(`handed back by draining worker ${deps.workerId}`);
  }
  if (aborted && timedOut) {
    const err = new JobRejectedError(`job exceeded the ${deps.jobTimeoutMs} ms limit`, 'timeout');
    await finishAttempt(ctx, decoder, { kind: 'timeout', err, ...ran, final: true });
    throw new UnrecoverableError(err.message);
  }
  const finishReason: FinishReason = result.finishReason;
  return await finishAttempt(ctx, decoder, {
    kind: finishReason === 'cancelled' ? 'cancelled' : 'completed',
    ...ran,
    promptTokens: result.promptTokens,
    final: true,
    text: result.text,
    finishReason,
  });
}

/** Usage (+ settlement on the final attempt), metrics, then the terminal event. Returns the result. */
async function finishAttempt(ctx: AttemptContext, decoder: DecoderName, end: AttemptEnd): Promise<JobResult> {
  const wallMs = Date.now() - ctx.started;
  const promptTokens = end.promptTokens ?? ctx.data.promptTokens;
  const stats = draftStats(end.stats);
  const finishReason: FinishReason = end.finishReason ?? (end.kind === 'cancelled' ? 'cancelled' : 'error');
  const usage = usageRecord(ctx, decoder, end, { wallMs, promptTokens, stats, finishReason });
  await settleUsage(ctx.redis, usage, end.final);
  await addJobMetrics(ctx, end.kind, usage, stats);
  const result = jobResult(decoder, end, { promptTokens, stats, finishReason });
  ctx.log[end.kind === 'completed' || end.kind === 'cancelled' ? 'info' : 'warn'](
    {
      status: end.kind,
      final: end.final,
      finishReason,
      completionTokens: end.completionTokens,
      wallMs,
      ...(end.err ? { error: end.err.message } : {}),
    },
    `job ${ctx.jobId} attempt ${ctx.attempt}: ${end.kind} (${finishReason}), ${end.completionTokens} tokens in ${wallMs} ms`,
  );
  if (!end.final) return result;
  await publishTerminal(ctx, end, result);
  return result;
}

interface EndFigures {
  wallMs: number;
  promptTokens: number;
  stats: DraftStats;
  finishReason: FinishReason;
}

const usageStatus = (kind: AttemptEnd['kind']): UsageRecord['status'] =>
  kind === 'completed'
    ? 'completed'
    : kind === 'cancelled'
      ? 'cancelled'
      : kind === 'timeout'
        ? 'timed_out'
        : 'failed';

function usageRecord(ctx: AttemptContext, decoder: DecoderName, end: AttemptEnd, f: EndFigures): UsageRecord {
  return {
    tenant: ctx.data.tenant,
    jobId: ctx.jobId,
    attempt: ctx.attempt,
    model: ctx.data.model ?? ctx.deps.model,
    status: usageStatus(end.kind),
    finishReason: f.finishReason,
    promptTokens: f.promptTokens,
    completionTokens: end.completionTokens,
    draftTokensProposed: f.stats.draftTokens,
    draftTokensAccepted: f.stats.accepted,
    decoder,
    wallMs: f.wallMs,
    // a pipeline holds one device per stage, whatever the plan's device count
    deviceSeconds: (f.wallMs / 1000) * Math.max(ctx.deps.stages, end.stats?.stages?.length ?? 0),
    endedAt: Date.now(),
  };
}

/** The attempt's counters in `keys.metrics(model)`. */
async function addJobMetrics(
  ctx: AttemptContext,
  kind: AttemptEnd['kind'],
  usage: UsageRecord,
  stats: DraftStats,
): Promise<void> {
  const m = keys.metrics(ctx.deps.model);
  const counter =
    kind === 'completed'
      ? METRIC_FIELDS.requestSuccess
      : kind === 'cancelled'
        ? METRIC_FIELDS.requestCancelled
        : METRIC_FIELDS.requestFailure;
  const tx = ctx.redis.multi();
  stats.stages?.forEach((st, i) => {
    tx.hincrbyfloat(m, `${STAGE_METRIC_PREFIX.busySeconds}${i}`, (st.busyMs ?? 0) / 1000);
    tx.hincrbyfloat(m, `${STAGE_METRIC_PREFIX.idleSeconds}${i}`, (st.idleMs ?? 0) / 1000);
  });
  await tx
    .hincrby(m, counter, 1)
    .hincrby(m, METRIC_FIELDS.promptTokens, usage.promptTokens)
    .hincrby(m, METRIC_FIELDS.generationTokens, usage.completionTokens)
    .hincrby(m, METRIC_FIELDS.drafts, stats.drafts)
    .hincrby(m, METRIC_FIELDS.draftTokens, stats.draftTokens)
    .hincrby(m, METRIC_FIELDS.acceptedTokens, stats.accepted)
    .hincrbyfloat(m, METRIC_FIELDS.deviceSeconds, usage.deviceSeconds)
    .exec();
}

function jobResult(decoder: DecoderName, end: AttemptEnd, f: Omit<EndFigures, 'wallMs'>): JobResult {
  const { promptTokens, stats } = f;
  return {
    text: end.text ?? '',
    finishReason: f.finishReason,
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: end.completionTokens,
      total_tokens: promptTokens + end.completionTokens,
    },
    speculation: {
      decoder,
      draftsProposed: stats.draftTokens,
      draftsAccepted: stats.accepted,
      acceptanceRate: stats.acceptanceRate,
      meanAcceptedLength: stats.meanAcceptedLength,
      ...(stats.stages ? { stages: stats.stages } : {}),
      ...(end.stats?.pipeline ? { pipelineStages: end.stats.stages?.length } : {}),
      ...(end.stats?.draftLength !== undefined ? { draftLength: end.stats.draftLength } : {}),
    },
  };
}

/** The `error` event's code for what ended a failed attempt. */
const errorCode = (err: Error | undefined): string =>
  err instanceof JobRejectedError
    ? err.code
    : err?.name === 'PromptTooLongError'
      ? 'prompt_too_long'
      : err instanceof RangeError
        ? 'invalid_request'
        : 'engine_error';

/** `done` for a completed or cancelled job, else `error` (which also expires the stream). */
async function publishTerminal(ctx: AttemptContext, end: AttemptEnd, result: JobResult): Promise<void> {
  const { attempt } = ctx;
  if (end.kind === 'completed' || end.kind === 'cancelled') {
    await ctx.publish({ type: 'done', attempt, result }, 'terminal');
    return;
  }
  await ctx.publish(
    {
      type: 'error',
      attempt,
      message: end.err?.message ?? 'job failed',
      code: errorCode(end.err),
      finishReason: 'error',
    },
    'terminal',
  );
}

interface PublishItem {
  ev: StreamEvent;
  kind: PublishKind;
  tokenEnd: number;
  charsEnd: number;
}

/** Largest merged token event (ids). */
const MAX_MERGED_IDS = 256;

/**
 * Writes a job's events one at a time in order; consecutive pending token events are merged. `push`
 * resolves when its event is written (or merged into one that is); write errors are kept in `error`.
 */
export class EventPublisher {
  private readonly queue: { item: PublishItem; done: (() => void)[] }[] = [];
  private running: Promise<void> | null = null;
  error: unknown = null;

  constructor(private readonly write: (item: PublishItem) => Promise<unknown>) {}

  push(item: PublishItem): Promise<void> {
    return new Promise<void>((resolve) => {
      this.queue.push({ item, done: [resolve] });
      this.running ??= this.run().finally(() => {
        this.running = null;
      });
    });
  }

  /** Resolves once everything pushed so far is written. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async run(): Promise<void> {
    for (let head = this.queue.shift(); head; head = this.queue.shift()) {
      const { item, done } = head;
      if (item.ev.type === 'tokens') {
        const ev = {
          ...item.ev,
          ids: [...item.ev.ids],
          ...(item.ev.segments ? { segments: [...item.ev.segments] } : {}),
        };
        for (let next = this.queue[0]; next && next.item.ev.type === 'tokens'; next = this.queue[0]) {
          const n = next.item.ev;
          if (
            n.attempt !== ev.attempt ||
            n.index !== ev.index + ev.ids.length ||
            ev.ids.length + n.ids.length > MAX_MERGED_IDS
          )
            break;
          this.queue.shift();
          ev.ids.push(...n.ids);
          ev.text += n.text;
          if (ev.logprobs || n.logprobs) ev.logprobs = [...(ev.logprobs ?? []), ...(n.logprobs ?? [])];
          ev.segments = ev.segments && n.segments ? [...ev.segments, ...n.segments] : undefined;
          item.tokenEnd = next.item.tokenEnd;
          item.charsEnd = next.item.charsEnd;
          done.push(...next.done);
        }
        item.ev = ev;
      }
      try {
        await this.write(item);
      } catch (err) {
        this.error ??= err;
      }
      for (const d of done) d();
    }
  }
}

/** The stream already ended (an earlier attempt finished but died before BullMQ recorded it). */
async function replayTerminal(
  redis: Redis,
  eventsKey: string,
  jobId: string,
  log: Logger,
): Promise<JobResult> {
  const last = await redis.xrevrange(eventsKey, '+', '-', 'COUNT', 1);
  const fields = last[0]?.[1];
  const ev = fields ? (JSON.parse(fields[fields.indexOf('e') + 1]) as StreamEvent) : null;
  log.info(`job ${jobId}: already ended in its stream, recording that result`);
  if (ev?.type === 'done') return ev.result;
  throw new UnrecoverableError(ev?.type === 'error' ? ev.message : 'job stream ended earlier');
}

/**
 * A job that BullMQ failed without running it (stalled more than allowed): end its stream so clients
 * are not left waiting, record usage for the attempt, release its reservation.
 */
export async function failUnrun(
  redisRaw: Redis,
  job: Job<GenerationJob>,
  reason: string,
  model: string,
): Promise<void> {
  const redis = withJobScripts(redisRaw);
  const data = job.data;
  const jobId = job.id ?? data.id;
  const attempt = attemptOf(job);
  const usage: UsageRecord = {
    tenant: data.tenant,
    jobId,
    attempt,
    model: data.model ?? model,
    status: 'failed',
    finishReason: 'error',
    promptTokens: data.promptTokens,
    completionTokens: 0,
    draftTokensProposed: 0,
    draftTokensAccepted: 0,
    decoder: 'ar',
    wallMs: 0,
    deviceSeconds: 0,
    endedAt: Date.now(),
  };
  await settleUsage(redis, usage, true);
  const ev: StreamEvent = {
    type: 'error',
    attempt,
    message: reason,
    code: 'worker_lost',
    finishReason: 'error',
  };
  await publishJobEvent(redis, jobId, ev, 'terminal', { attempt });

  await redis.hincrby(keys.metrics(model), METRIC_FIELDS.requestFailure, 1);
}
