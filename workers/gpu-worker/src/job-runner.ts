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
 */
import {
  type DecoderName,
  EVENTS_MAX_LEN,
  EVENTS_TTL_SECONDS,
  type FinishReason,
  type GenerationJob,
  type JobResult,
  keys,
  lastSegments,
  progressKeys,
  type Speculation,
  type StreamEvent,
  settleUsage,
  type UsageRecord,
} from '@ppsd/contract';
import type { SpeculationStats } from '@ppsd/engine';
import { DelayedError, type Job, UnrecoverableError } from 'bullmq';
import type { Redis } from 'ioredis';
import type { CancelRegistry } from './cancel';
import { type DraftStats, draftStats, type WorkerEngine, type WorkerTokenEvent } from './engine-types';
import { withScripts } from './scripts';

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
  ensureDecoder?: (decoder: DecoderName) => Promise<void>;
  /** Pipeline stages (devices) a generation holds, for device seconds. */
  stages: number;
  cancels: CancelRegistry;
  log: (msg: string) => void;
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

/** The attempt number of the current run: BullMQ counts starts (stalled restarts included). */
export const attemptOf = (job: Job): number =>
  Math.max(job.attemptsStarted ?? 0, (job.attemptsMade ?? 0) + 1, 1);

export function createProcessor(
  deps: RunnerDeps,
): (job: Job<GenerationJob, JobResult>, token?: string) => Promise<JobResult> {
  const redis = withScripts(deps.redis);

  return async function processJob(job, token) {
    const data = job.data;
    const jobId = job.id ?? data.id;
    const attempt = attemptOf(job);
    const started = Date.now();
    const eventsKey = keys.jobEvents(jobId);
    const progressKey = progressKeys.jobProgress(jobId);
    const wake = keys.jobWake(jobId);

    // Publication queue: strictly ordered, idempotent, never blocks the engine. Token batches that pile up
    // while a write is in flight are merged into one event (contiguous indexes), so a slow Redis (AOF
    // fsync always, a reconnect) costs fewer round trips instead of a growing backlog.
    const publisher = new EventPublisher((item) =>
      redis.ppsdPublishEvent(
        eventsKey,
        progressKey,
        keys.jobCancelled(jobId),
        JSON.stringify(item.ev),
        EVENTS_MAX_LEN,
        wake,
        item.kind,
        item.tokenEnd,
        item.charsEnd,
        attempt,
        EVENTS_TTL_SECONDS,
      ),
    );
    const publish = (ev: StreamEvent, kind: PublishKind, tokenEnd = 0, charsEnd = 0): Promise<void> =>
      publisher.push({ ev, kind, tokenEnd, charsEnd });

    const [tokensRaw, charsRaw, doneRaw] = await redis.hmget(progressKey, 'tokens', 'chars', 'done');
    if (doneRaw) return replayTerminal(redis, eventsKey, jobId, deps.log);
    const publishedTokens = Number(tokensRaw ?? 0);
    let publishedChars = Number(charsRaw ?? 0);

    const ac = deps.cancels.register(jobId);
    deps.onBusy?.(1);
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    let decoder: DecoderName = 'ar';
    try {
      if (await deps.cancels.isCancelled(jobId)) ac.abort(new Error('cancelled'));
      try {
        decoder = resolveDecoder(data.speculation, deps.defaultDecoder, deps.decoders);
        await deps.ensureDecoder?.(decoder);
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
      deps.log(
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
        // marks for exactly `text` (a retried attempt publishes only the tail the stream lacks)
        const segments = text.length <= ev.text.length ? lastSegments(ev.segments, text.length) : undefined;
        void publish(
          { type: 'tokens', attempt, index: ev.index + skip, ids: ev.ids.slice(skip), text, segments },
          'tokens',
          end,
          publishedChars,
        );
        if (delay > 0) return new Promise((r) => setTimeout(r, delay));
      };

      let result: Awaited<ReturnType<WorkerEngine['generate']>>;
      try {
        result = await deps.engine.generate(
          data.prompt,
          {
            maxTokens: data.params.maxTokens,
            temperature: data.params.temperature,
            topP: data.params.topP,
            seed: data.params.seed,
            stop: data.params.stop ?? [],
            decoder,
            signal: ac.signal,
          },
          onTokens,
        );
      } catch (err) {
        const e = err as Error;
        const rejected = e.name === 'PromptTooLongError' || err instanceof JobRejectedError;
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
          ? 'request_success_total'
          : end.kind === 'cancelled'
            ? 'request_cancelled_total'
            : 'request_failure_total';
      const tx = redis.multi();
      stats.stages?.forEach((st, i) => {
        tx.hincrbyfloat(m, `stage_busy_seconds_total:${i}`, (st.busyMs ?? 0) / 1000);
        tx.hincrbyfloat(m, `stage_idle_seconds_total:${i}`, (st.idleMs ?? 0) / 1000);
      });
      await tx
        .hincrby(m, counter, 1)
        .hincrby(m, 'prompt_tokens_total', promptTokens)
        .hincrby(m, 'generation_tokens_total', end.completionTokens)
        .hincrby(m, 'spec_decode_num_drafts_total', stats.drafts)
        .hincrby(m, 'spec_decode_num_draft_tokens_total', stats.draftTokens)
        .hincrby(m, 'spec_decode_num_accepted_tokens_total', stats.accepted)
        .hincrbyfloat(m, 'device_seconds_total', usage.deviceSeconds)
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
        },
      };
      if (!end.final) return result;
      if (end.kind === 'completed' || end.kind === 'cancelled') {
        await publish({ type: 'done', attempt, result }, 'terminal');
      } else {
        const code =
          end.err instanceof JobRejectedError
            ? end.err.code
            : end.err?.name === 'PromptTooLongError'
              ? 'prompt_too_long'
              : 'engine_error';
        await publish(
          { type: 'error', attempt, message: end.err?.message ?? 'job failed', code, finishReason: 'error' },
          'terminal',
        );
      }
      deps.log(
        `job ${jobId} attempt ${attempt}: ${end.kind} (${finishReason}), ${end.completionTokens} tokens in ${wallMs} ms`,
      );
      return result;
    }
  };
}

type PublishKind = 'start' | 'tokens' | 'terminal';
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
  log: (m: string) => void,
): Promise<JobResult> {
  const last = await redis.xrevrange(eventsKey, '+', '-', 'COUNT', 1);
  const fields = last[0]?.[1];
  const ev = fields ? (JSON.parse(fields[fields.indexOf('e') + 1]) as StreamEvent) : null;
  log(`job ${jobId}: already ended in its stream, recording that result`);
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
  const redis = withScripts(redisRaw);
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
  await redis.ppsdPublishEvent(
    keys.jobEvents(jobId),
    progressKeys.jobProgress(jobId),
    keys.jobCancelled(jobId),
    JSON.stringify(ev),
    EVENTS_MAX_LEN,
    keys.jobWake(jobId),
    'terminal',
    0,
    0,
    attempt,
    EVENTS_TTL_SECONDS,
  );
  await redis.hincrby(keys.metrics(model), 'request_failure_total', 1);
}
