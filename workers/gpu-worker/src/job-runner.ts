/**
 * One attempt of one job: the BullMQ processor.
 *
 * - Reads the job's progress first (tokens and text already in its stream), so a retried attempt
 *   (stalled worker, failure, hand-back) regenerates the same text with the same seed and publishes only
 *   token indexes the stream lacks. Every write is an idempotent script, so ioredis re-sending a command
 *   after a reconnect duplicates nothing either.
 * - Publishes each batch of verified tokens as it comes: XADD to keys.jobEvents (MAXLEN ~) plus a
 *   PUBLISH on keys.jobWake, in order, through a per-job ordered queue that never blocks the engine (pending token batches merge).
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

export function createProcessor(
  deps: RunnerDeps,
): (job: Job<GenerationJob, JobResult>, token?: string) => Promise<JobResult> {
  const redis = withJobScripts(deps.redis);

  return async function processJob(job, token) {
    const data = job.data;
    const jobId = job.id ?? data.id;
    const attempt = attemptOf(job);
    const log = deps.log.child({ jobId, tenant: data.tenant, attempt });
    const started = Date.now();
    const eventsKey = keys.jobEvents(jobId);
    const progressKey = progressKeys.jobProgress(jobId);

    // Publication queue: strictly ordered, idempotent, never blocks the engine. Token batches that pile up
    // while a write is in flight are merged into one event (contiguous indexes), so a slow Redis (AOF
    // fsync always, a reconnect) costs fewer round trips instead of a growing backlog.
    const publisher = new EventPublisher((item) =>
      publishJobEvent(redis, jobId, item.ev, item.kind, {
        attempt,
        tokenEnd: item.tokenEnd,
        charsEnd: item.charsEnd,
      }),
    );
    const publish = (ev: StreamEvent, kind: PublishKind, tokenEnd = 0, charsEnd = 0): Promise<void> =>
      publisher.push({ ev, kind, tokenEnd, charsEnd });

    const [tokensRaw, charsRaw, doneRaw] = await redis.hmget(progressKey, 'tokens', 'chars', 'done');
    if (doneRaw) return replayTerminal(redis, eventsKey, jobId, log);
    if (attempt > 1) {
      // The previous attempt ended without a terminal event (its worker died, hung or failed): say so
      // before this attempt starts, so a waiting client knows why the tokens paused.
      void publish({ type: 'retry', attempt: attempt - 1, reason: retryReason(job) }, 'retry');
    }
    const publishedTokens = Number(tokensRaw ?? 0);
    let publishedChars = Number(charsRaw ?? 0);

    const ac = deps.cancels.register(jobId, (m) => log.info(m));
    deps.onBusy?.(1);
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    let decoder: DecoderName = 'ar';
    let plan: ResolvedSpeculation = { decoder };
    try {
      if (await deps.cancels.isCancelled(jobId)) ac.abort(new Error('cancelled'));
      try {
        plan = resolveSpeculation(data.speculation, deps.defaultDecoder, deps.decoders, deps.maxStages ?? 2);
        decoder = plan.decoder;
        await deps.ensureDecoder?.(decoder, log);
      } catch (err) {
        await finish({
          kind: 'error',
          err: err as Error,
          completionTokens: 0,
          stats: undefined,
          final: true,
        });
        throw new UnrecoverableError((err as Error).message);
      }
      void publish(
        {
          type: 'start',
          attempt,
          workerId: deps.workerId,
          decoder,
          queuedMs: Math.max(0, started - (data.enqueuedAt || started)),
        },
        'start',
      );
      log.info(
        { decoder, maxTokens: data.params.maxTokens, publishedTokens },
        `job ${jobId} attempt ${attempt}: ${decoder}, max_tokens ${data.params.maxTokens}` +
          (publishedTokens ? `, ${publishedTokens} tokens already published` : ''),
      );
      if (deps.jobTimeoutMs && deps.jobTimeoutMs > 0) {
        timer = setTimeout(() => {
          timedOut = true;
          ac.abort(new Error('timed out'));
        }, deps.jobTimeoutMs);
      }

      let fullText = '';
      let verified = 0;
      const delay = deps.tokenDelayMs ?? 0;
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
        void publish(
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

      let result: Awaited<ReturnType<WorkerEngine['generate']>>;
      try {
        const p = data.params;
        result = await deps.engine.generate(
          data.prompt,
          {
            maxTokens: p.maxTokens,
            temperature: p.temperature,
            topP: p.topP,
            seed: p.seed,
            stop: p.stop ?? [],
            logitBias: p.logitBias,
            presencePenalty: p.presencePenalty,
            frequencyPenalty: p.frequencyPenalty,
            logprobs: p.logprobs,
            ...plan,
            signal: ac.signal,
          },
          onTokens,
        );
      } catch (err) {
        const e = err as Error;
        // the engine refuses settings it cannot run with a RangeError: the same on every attempt
        const rejected =
          e.name === 'PromptTooLongError' || err instanceof JobRejectedError || err instanceof RangeError;
        const final = rejected || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
        await publisher.idle();
        await finish({ kind: 'error', err: e, completionTokens: verified, stats: undefined, final });
        if (final) throw new UnrecoverableError(e.message);
        throw e;
      }
      await publisher.idle();
      if (publisher.error) throw publisher.error;

      const aborted = result.finishReason === 'cancelled';
      if (aborted && deps.handBack?.() && !timedOut && !(await deps.cancels.isCancelled(jobId))) {
        // Drain deadline passed: hand the job back so another worker continues it (nothing is duplicated).
        await finish({
          kind: 'handback',
          completionTokens: result.completionTokens,
          stats: result.stats,
          final: false,
        });
        await job.moveToDelayed(Date.now(), token);
        throw new DelayedError(`handed back by draining worker ${deps.workerId}`);
      }
      if (aborted && timedOut) {
        const err = new JobRejectedError(`job exceeded the ${deps.jobTimeoutMs} ms limit`, 'timeout');
        await finish({
          kind: 'timeout',
          err,
          completionTokens: result.completionTokens,
          stats: result.stats,
          final: true,
        });
        throw new UnrecoverableError(err.message);
      }
      const finishReason: FinishReason = result.finishReason;
      return await finish({
        kind: finishReason === 'cancelled' ? 'cancelled' : 'completed',
        completionTokens: result.completionTokens,
        promptTokens: result.promptTokens,
        stats: result.stats,
        final: true,
        text: result.text,
        finishReason,
      });
    } finally {
      if (timer) clearTimeout(timer);
      deps.cancels.release(jobId, ac);
      deps.onBusy?.(-1);
    }

    /** Usage (+ settlement on the final attempt), metrics, then the terminal event. Returns the result. */
    async function finish(end: {
      kind: 'completed' | 'cancelled' | 'error' | 'timeout' | 'handback';
      completionTokens: number;
      promptTokens?: number;
      stats: SpeculationStats | undefined;
      final: boolean;
      err?: Error;
      text?: string;
      finishReason?: FinishReason;
    }): Promise<JobResult> {
      const wallMs = Date.now() - started;
      const promptTokens = end.promptTokens ?? data.promptTokens;
      const stats: DraftStats = draftStats(end.stats);
      const status: UsageRecord['status'] =
        end.kind === 'completed'
          ? 'completed'
          : end.kind === 'cancelled'
            ? 'cancelled'
            : end.kind === 'timeout'
              ? 'timed_out'
              : 'failed';
      const finishReason: FinishReason =
        end.finishReason ?? (end.kind === 'cancelled' ? 'cancelled' : 'error');
      const usage: UsageRecord = {
        tenant: data.tenant,
        jobId,
        attempt,
        model: data.model ?? deps.model,
        status: end.kind === 'handback' ? 'failed' : status,
        finishReason,
        promptTokens,
        completionTokens: end.completionTokens,
        draftTokensProposed: stats.draftTokens,
        draftTokensAccepted: stats.accepted,
        decoder,
        wallMs,
        // a pipeline holds one device per stage, whatever the plan's device count
        deviceSeconds: (wallMs / 1000) * Math.max(deps.stages, end.stats?.stages?.length ?? 0),
        endedAt: Date.now(),
      };
      await settleUsage(redis, usage, end.final);
      const m = keys.metrics(deps.model);
      const counter =
        end.kind === 'completed'
          ? METRIC_FIELDS.requestSuccess
          : end.kind === 'cancelled'
            ? METRIC_FIELDS.requestCancelled
            : METRIC_FIELDS.requestFailure;
      const tx = redis.multi();
      stats.stages?.forEach((st, i) => {
        tx.hincrbyfloat(m, `${STAGE_METRIC_PREFIX.busySeconds}${i}`, (st.busyMs ?? 0) / 1000);
        tx.hincrbyfloat(m, `${STAGE_METRIC_PREFIX.idleSeconds}${i}`, (st.idleMs ?? 0) / 1000);
      });
      await tx
        .hincrby(m, counter, 1)
        .hincrby(m, METRIC_FIELDS.promptTokens, promptTokens)
        .hincrby(m, METRIC_FIELDS.generationTokens, end.completionTokens)
        .hincrby(m, METRIC_FIELDS.drafts, stats.drafts)
        .hincrby(m, METRIC_FIELDS.draftTokens, stats.draftTokens)
        .hincrby(m, METRIC_FIELDS.acceptedTokens, stats.accepted)
        .hincrbyfloat(m, METRIC_FIELDS.deviceSeconds, usage.deviceSeconds)
        .exec();

      const result: JobResult = {
        text: end.text ?? '',
        finishReason,
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
      log[end.kind === 'completed' || end.kind === 'cancelled' ? 'info' : 'warn'](
        {
          status: end.kind,
          final: end.final,
          finishReason,
          completionTokens: end.completionTokens,
          wallMs,
          ...(end.err ? { error: end.err.message } : {}),
        },
        `job ${jobId} attempt ${attempt}: ${end.kind} (${finishReason}), ${end.completionTokens} tokens in ${wallMs} ms`,
      );
      if (!end.final) return result;
      if (end.kind === 'completed' || end.kind === 'cancelled') {
        await publish({ type: 'done', attempt, result }, 'terminal');
      } else {
        const code =
          end.err instanceof JobRejectedError
            ? end.err.code
            : end.err?.name === 'PromptTooLongError'
              ? 'prompt_too_long'
              : end.err instanceof RangeError
                ? 'invalid_request'
                : 'engine_error';
        await publish(
          { type: 'error', attempt, message: end.err?.message ?? 'job failed', code, finishReason: 'error' },
          'terminal',
        );
      }
      return result;
    }
  };
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
