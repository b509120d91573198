/**
 * Opens the engine (`EngineThread` from @ppsd/engine: the Engine in its own thread, so its batched steps
 * never block this process's event loop, which publishes tokens and renews job locks), runs the warm-up
 * generation and keeps track of which decoders this package can run.
 */
import type { DecoderName } from '@ppsd/contract';
import { Engine, type EngineHandle, EngineThread } from '@ppsd/engine';
import type { WorkerEngine } from './engine-types';
import { JobRejectedError } from './job-runner';

export interface OpenedEngine {
  engine: WorkerEngine;
  decoders: DecoderName[];
}

export interface EngineOpenOptions {
  decoder: DecoderName;
  devices: string[];
  maxSeqLen?: number;
  /** Most sequences one batched step runs (PPSD_MAX_BATCH). */
  maxBatch?: number;
  /** KV pool budget in bytes (PPSD_KV_MEMORY); undefined = the engine's default. */
  kvMemoryBytes?: number;
  allowCpuFallback: boolean;
  /** The caller verified every checksum moments ago (fresh S3 pull): skip the engine's own pass. */
  verified?: boolean;
  /** Generations wait for each token callback's promise (PPSD_FAULT_TOKEN_DELAY_MS slows them down). */
  awaitTokens?: boolean;
  /** Run the engine in its own thread (PPSD_ENGINE_THREAD, default) or on this one. */
  thread?: boolean;
  log: (msg: string) => void;
}

type EngineOptions = NonNullable<Parameters<typeof Engine.open>[1]>;

export async function openEngine(dir: string, opts: EngineOpenOptions): Promise<EngineHandle> {
  const options: EngineOptions = {
    decoder: opts.decoder,
    devices: opts.devices as EngineOptions['devices'],
    ...(opts.maxSeqLen ? { maxSeqLen: opts.maxSeqLen } : {}),
    ...(opts.maxBatch ? { maxBatch: opts.maxBatch } : {}),
    ...(opts.kvMemoryBytes ? { kvMemoryBytes: opts.kvMemoryBytes } : {}),
    verified: opts.verified === true,
    allowCpuFallback: opts.allowCpuFallback,
    log: opts.log,
  };
  if (opts.thread === false) return Engine.open(dir, options);
  return EngineThread.open(dir, options, { awaitTokens: opts.awaitTokens });
}

const WARMUP_PROMPT = 'Once upon a time';

/** One-token generation with `decoder`; throws when it fails or yields nothing. */
export async function warmUp(engine: WorkerEngine, decoder: DecoderName): Promise<number> {
  const t0 = performance.now();
  const res = await engine.generate(WARMUP_PROMPT, {
    maxTokens: 1,
    temperature: 0,
    topP: 1,
    seed: 0,
    stop: [],
    decoder,
  });
  if (res.completionTokens < 1 && res.finishReason !== 'stop')
    throw new Error(`warm-up with ${decoder} produced no token`);
  return performance.now() - t0;
}

/**
 * Which decoders this worker runs. The default one is warmed at start-up (it must work); the others are
 * opened by the engine on first use, so each is probed with a one-token generation the first time a job
 * asks for it: from then on it is known good (advertised in the heartbeat) or known missing (jobs asking
 * for it fail at once with 'unsupported_decoder'). Probing lazily keeps a worker from building sessions
 * and KV caches for decoders nobody asks for.
 */
export class DecoderSupport {
  private readonly good = new Set<DecoderName>();
  private readonly missing = new Map<DecoderName, string>();
  private readonly probing = new Map<DecoderName, Promise<void>>();

  constructor(
    private readonly engine: WorkerEngine,
    readonly defaultDecoder: DecoderName,
    private readonly log: (m: string) => void,
    private readonly onChange: (available: DecoderName[]) => void = () => {},
  ) {}

  get available(): DecoderName[] {
    return [...this.good];
  }

  /** Warm-up with the default decoder; throws when it fails (the worker then never becomes ready). */
  async warmUpDefault(): Promise<void> {
    const ms = await warmUp(this.engine, this.defaultDecoder);
    this.good.add(this.defaultDecoder);
    this.log(`warm-up generation with ${this.defaultDecoder} ok (${ms.toFixed(0)} ms)`);
  }

  /** `jobLog`: where the first probe's outcome is logged (the asking job's logger; default the worker's). */
  ensure(decoder: DecoderName, jobLog?: { info(msg: string): void }): Promise<void> {
    if (this.good.has(decoder)) return Promise.resolve();
    const log = jobLog ? (m: string) => jobLog.info(m) : this.log;
    const why = this.missing.get(decoder);
    if (why !== undefined) return Promise.reject(unsupported(decoder, why));
    let p = this.probing.get(decoder);
    if (!p) {
      p = warmUp(this.engine, decoder).then(
        (ms) => {
          this.good.add(decoder);
          log(`decoder ${decoder} opened and warmed (${ms.toFixed(0)} ms)`);
          this.onChange(this.available);
        },
        (err: Error) => {
          const reason = err.message.split('\n')[0];
          this.missing.set(decoder, reason);
          log(`decoder ${decoder} not available: ${reason}`);
        },
      );
      this.probing.set(decoder, p);
    }
    return p.then(() => {
      this.probing.delete(decoder);
      const reason = this.missing.get(decoder);
      if (reason !== undefined) throw unsupported(decoder, reason);
    });
  }
}

const unsupported = (decoder: DecoderName, why: string) =>
  new JobRejectedError(`decoder '${decoder}' is not available on this worker: ${why}`, 'unsupported_decoder');
