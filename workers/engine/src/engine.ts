import { totalmem } from 'node:os';
import { type Decoder, type DecoderName, startStats } from './decode/decoder';
import { createDecoder, type DecoderContext, pipelineSetup, planPpsd } from './decode/index';
import { type DecoderPlan, decoderContext, openDecoder } from './decoders';
import {
  biasMap,
  type GenerateParams,
  type GenerationResult,
  type OnTokens,
  runGeneration,
} from './generate/generate';
import { endTokenIds } from './model/llama';
import { type LoadedPackage, loadPackage } from './package';
import { parseDevice } from './runtime';
import { PipelineServer, type PipelineServerStats } from './schedule/pipeline-server';
import { Scheduler } from './schedule/scheduler';
import type { Tokenizer } from './tokenizer';

/** Sequences one step batches when the worker names no PPSD_MAX_BATCH (docs/BENCHMARKS.md, batching). */
export const DEFAULT_MAX_BATCH = 16;
/** Share of the machine's RAM the KV pool may hold when no budget is given. */
export const DEFAULT_KV_SHARE = 0.25;
/**
 * `decoder: 'auto'` speculates (with the engine's default decoder) only while fewer than this many other
 * generations are in flight, i.e. only alone: on this machine a batch of 16 AR sequences makes ~5x one
 * sequence's tokens/s, speculation at best ~1.4x (docs/BENCHMARKS.md), and drafts would add rows to
 * every shared step.
 */
export const AUTO_SPECULATE_BELOW = 1;

export interface EngineOptions extends DecoderPlan {
  /** Decoder used when a request names none. */
  decoder?: DecoderName;
  /** Skip checksum verification (only for packages verified moments ago by the caller). */
  verified?: boolean;
  /** Most sequences one batched step runs together (default DEFAULT_MAX_BATCH). */
  maxBatch?: number;
  /** Bytes the KV pool may hold across running sequences (default: DEFAULT_KV_SHARE of RAM). */
  kvMemoryBytes?: number;
  /**
   * PPSD generations share one pipeline of batched stage threads (schedule/pipeline-server.ts; default
   * true). false: each runs alone on the pipeline of Workers, one generation at a time.
   */
  servePipelines?: boolean;
  /** Served PPSD: sequences in flight below which they draft (default: the pipeline depth). */
  speculateBelow?: number;
}

export interface EngineGenerateParams extends GenerateParams {
  /** A decoder, or 'auto': the engine's default while the engine is nearly idle, AR under load. */
  decoder?: DecoderName | 'auto';
  /** PPSD / SPD pipeline depth k for this generation (default: the plan's); at most `maxStages`. */
  stages?: number;
  /**
   * Called once, when the scheduler admits the sequence (a batch slot and its KV memory are free) and
   * before its prompt is prefilled. A caller's timers for the generation start here, not while it waits.
   */
  onAdmitted?: () => void;
}

/** The scheduler's load, for metrics and autoscaling (vLLM's num_requests_running / _waiting etc.). */
export interface SchedulerStats {
  /** Sequences admitted and generating. */
  running: number;
  /** Sequences accepted but waiting for a batch slot or KV memory. */
  waiting: number;
  /** Most sequences one step runs together. */
  maxBatch: number;
  /** KV memory held by running sequences, and the pool's budget (bytes). */
  kvUsedBytes: number;
  kvBudgetBytes: number;
  /** Steps run so far, by batch size: stepsByBatchSize[n] = steps that ran n sequences together. */
  stepsByBatchSize: Record<number, number>;
}

/** Decoders whose depth `stages` sets, and those whose block length `draftLength` sets. */
const PIPELINES: readonly DecoderName[] = ['ppsd', 'spd'];
const BLOCK_DRAFTERS: readonly DecoderName[] = ['eesd', 'dv'];
/** Decoders whose stages run in the scheduler's batched steps (the pipelines own worker threads). */
const BATCHED: readonly DecoderName[] = ['ar', 'eesd', 'dv'];

export class PromptTooLongError extends Error {
  override name = 'PromptTooLongError';
  constructor(
    readonly promptTokens: number,
    readonly maxTokens: number,
    readonly maxContext: number,
  ) {
    super(
      `prompt of ${promptTokens} tokens plus max_tokens ${maxTokens} exceeds the context of ${maxContext} tokens`,
    );
  }
}

/**
 * A loaded model package, its scheduler and its decoders: the one object the CLI and the worker generate
 * through. AR, EESD and DV generations run as sequences of the scheduler's batched steps, up to
 * `maxBatch` at once (each sequence has its own decoder over its own KV caches, see schedule/); the
 * pipeline decoders (PPSD, SPD) own worker threads per stage and run one generation at a time, beside
 * the batch.
 */
export class Engine {
  /** Pipeline decoders by name and depth ('ppsd:3'); at most maxStages - 1 per pipeline. */
  private readonly pipelines = new Map<string, Promise<Decoder>>();
  /** Resolved decoder contexts by name (calibration read once); each batched sequence builds from one. */
  private readonly contexts = new Map<DecoderName, Promise<DecoderContext>>();
  private pipelineQueue: Promise<unknown> = Promise.resolve();
  /** Batched generations in flight (close() lets them finish). */
  private readonly batched = new Set<Promise<GenerationResult>>();
  /** Batched generations accepted and not finished (admitted or not), counted from the call. */
  private batchedInFlight = 0;
  private pipelineRunning = 0;
  private pipelineWaiting = 0;
  /** The served PPSD pipeline (built on first use, or at open when PPSD is the default). */
  private server?: Promise<PipelineServer>;
  /** The same server once started (read synchronously by schedulerStats). */
  private servedPipeline?: PipelineServer;
  /** Servers whose stage thread died, closing once their sequences have failed (close() waits). */
  private readonly brokenServers = new Set<PipelineServer>();
  readonly scheduler?: Scheduler;

  private constructor(
    readonly pkg: LoadedPackage,
    private readonly options: EngineOptions,
  ) {
    const devices = options.devices?.length ? options.devices : ['cpu'];
    const device = parseDevice(devices[0]);
    // The batched graph needs fused attention over a host cache: CPU and CUDA, not WebGPU.
    if (device !== 'webgpu') {
      this.scheduler = new Scheduler(pkg.model, {
        maxBatch: options.maxBatch ?? DEFAULT_MAX_BATCH,
        kvBudgetBytes: options.kvMemoryBytes ?? Math.floor(DEFAULT_KV_SHARE * totalmem()),
        stage: {
          device,
          threads: device === 'cpu' ? (options.threadsPerStage ?? 1) * devices.length : 1,
          maxSeqLen: options.maxSeqLen,
          allowCpuFallback: options.allowCpuFallback ?? !!options.log,
          log: options.log,
        },
      });
    }
  }

  static async open(packageDir: string, options: EngineOptions = {}): Promise<Engine> {
    const pkg = await loadPackage(packageDir, { verify: !options.verified });
    const engine = new Engine(pkg, options);
    const name = options.decoder ?? 'ar';
    await engine.prepare(name); // fail at open, not at the first request
    // AR is what 'auto' batches under load (unless PPSD is served, which adapts by itself): its sessions
    // for every lane count are built now, so the first full batch does not stall the step loop
    const N = pkg.model.config.nLayers;
    if (!engine.serves(name)) await engine.scheduler?.warm([{ firstLayer: 0, endLayer: N }]);
    return engine;
  }

  get manifest() {
    return this.pkg.manifest;
  }

  get tokenizer(): Tokenizer {
    return this.pkg.tokenizer;
  }

  /** Prompt plus completion tokens one generation can hold. */
  get maxContext(): number {
    return Math.min(this.options.maxSeqLen ?? Number.POSITIVE_INFINITY, this.pkg.model.config.maxSeqLen);
  }

  get defaultDecoder(): DecoderName {
    return this.options.decoder ?? 'ar';
  }

  /**
   * The deepest pipeline a generation may ask for: one stage per device of the plan (a one-device plan
   * still runs the default 2 on it), and never more stages than layers.
   */
  get maxStages(): number {
    const devices = this.options.devices?.length ?? 1;
    return Math.min(this.pkg.model.config.nLayers, Math.max(2, devices, this.options.stages ?? 0));
  }

  /** The pipeline depth when a generation names none (decoders.ts: openDecoder's k). */
  private get planStages(): number {
    const devices = this.options.devices?.length ?? 1;
    return Math.min(this.pkg.model.config.nLayers, this.options.stages ?? Math.max(2, devices));
  }

  /** The prompt as the engine feeds it: BOS where the tokenizer adds one (never twice), then the text. */
  encodePrompt(text: string): Int32Array {
    return Int32Array.from(this.tokenizer.encodePrompt(text));
  }

  countPromptTokens(text: string): number {
    return this.encodePrompt(text).length;
  }

  generate(prompt: string, params: EngineGenerateParams, onTokens?: OnTokens): Promise<GenerationResult> {
    const ids = this.encodePrompt(prompt);
    if (!(params.maxTokens >= 1)) throw new RangeError('maxTokens must be at least 1');
    if (ids.length === 0)
      throw new RangeError('the prompt is empty and this model starts prompts with no BOS');
    if (ids.length + params.maxTokens > this.maxContext) {
      throw new PromptTooLongError(ids.length, params.maxTokens, this.maxContext);
    }
    const name = this.resolveDecoder(params.decoder);
    this.checkParams(name, params);
    const served = this.serves(name, params.stages);
    if (this.scheduler && (BATCHED.includes(name) || served)) {
      const scheduler = this.scheduler;
      this.batchedInFlight++;
      const run = (
        served
          ? this.generateServed(scheduler, ids, params, params.decoder === 'auto', onTokens)
          : this.generateBatched(scheduler, name, ids, params, onTokens)
      ).finally(() => {
        this.batchedInFlight--;
      });
      this.batched.add(run);
      const forget = () => this.batched.delete(run);
      run.then(forget, forget);
      return run;
    }
    return this.generateAlone(name, ids, params, onTokens);
  }

  /**
   * 'auto' adapts to load: the default decoder while the engine is nearly idle (a speculative decoder
   * turns spare compute into speed for one sequence), plain AR once sequences share the steps (then the
   * batch itself uses the compute, and drafts would only add rows).
   */
  private resolveDecoder(asked: DecoderName | 'auto' | undefined): DecoderName {
    if (asked !== 'auto') return asked ?? this.defaultDecoder;
    // the served pipeline adapts its speculation to load itself
    if (this.serves(this.defaultDecoder)) return this.defaultDecoder;
    // every generation accepted and not finished, counted from the call (not from admission)
    const load = this.batchedInFlight + this.pipelineRunning + this.pipelineWaiting;
    return load < AUTO_SPECULATE_BELOW ? this.defaultDecoder : 'ar';
  }

  /** One sequence of the batch: waits for admission, then decodes with its own decoder and caches. */
  private async generateBatched(
    scheduler: Scheduler,
    name: DecoderName,
    ids: Int32Array,
    params: EngineGenerateParams,
    onTokens?: OnTokens,
  ): Promise<GenerationResult> {
    const rows = ids.length + params.maxTokens;
    // DV keeps a second cache of the same rows for its layer-skipping draft
    const kvBytes = rows * scheduler.bytesPerPosition * (name === 'dv' ? 2 : 1);
    const ctx = await this.context(name);
    const admission = await scheduler.admit({ rows, kvBytes }, params.signal);
    if (!admission) return cancelledBeforeStart(name, ids.length);
    try {
      params.onAdmitted?.();
      const decoder = await createDecoder(name, { ...ctx, createStage: admission.createStage });
      try {
        return await this.run(decoder, ids, params, onTokens);
      } finally {
        await decoder.close();
      }
    } finally {
      admission.release();
    }
  }

  /**
   * Whether `name` at depth `stages` runs on the served pipeline: PPSD at the plan's depth, with a
   * scheduler (the batched graphs need CPU or CUDA) unless servePipelines is off.
   */
  private serves(name: DecoderName, stages?: number): boolean {
    if (name !== 'ppsd' || !this.scheduler || this.options.servePipelines === false) return false;
    return stages === undefined || stages === this.planStages;
  }

  /**
   * One PPSD sequence on the served pipeline: admitted like any batched sequence, then pipelined.
   * `adaptive` (the request said 'auto'): it drafts only while the pipeline is lightly loaded.
   */
  private async generateServed(
    scheduler: Scheduler,
    ids: Int32Array,
    params: EngineGenerateParams,
    adaptive: boolean,
    onTokens?: OnTokens,
  ): Promise<GenerationResult> {
    const server = await this.pipelineServer();
    const rows = ids.length + params.maxTokens;
    const admission = await scheduler.admit({ rows, kvBytes: rows * server.bytesPerPosition }, params.signal);
    if (!admission) return cancelledBeforeStart('ppsd', ids.length);
    try {
      params.onAdmitted?.();
      return await server.withSequence(rows, adaptive, (decoder) => this.run(decoder, ids, params, onTokens));
    } finally {
      admission.release();
    }
  }

  private pipelineServer(): Promise<PipelineServer> {
    if (!this.server) {
      const maxBatch = this.scheduler?.options.maxBatch ?? 1;
      const server = this.context('ppsd').then((ctx) =>
        PipelineServer.start(ctx.model, planPpsd(ctx.model, pipelineSetup(ctx)), {
          maxBatch,
          devices: ctx.devices,
          threads: ctx.threadsPerStage ?? 1,
          maxSeqLen: ctx.maxSeqLen,
          accuracyLevel: ctx.accuracyLevel,
          allowCpuFallback: ctx.allowCpuFallback ?? !!ctx.log,
          speculateBelow: this.options.speculateBelow,
          onBroken: (err) => this.retireServer(server, err),
        }),
      );
      this.server = server;
      server.then(
        (s) => {
          this.servedPipeline = s;
        },
        () => undefined,
      );
      server.catch(() => {
        if (this.server === server) this.server = undefined;
      });
    }
    return this.server;
  }

  /** A served pipeline lost a stage thread: later PPSD sequences get a new one (built on next use). */
  private retireServer(server: Promise<PipelineServer>, err: Error): void {
    this.options.log?.(`served PPSD pipeline failed (${err.message}); starting a new one on next use`);
    void server.then((s) => {
      this.brokenServers.add(s);
      if (this.servedPipeline === s) this.servedPipeline = undefined;
    });
    if (this.server === server) this.server = undefined;
  }

  /** A pipeline generation (or any generation without a scheduler): one at a time, in arrival order. */
  private generateAlone(
    name: DecoderName,
    ids: Int32Array,
    params: EngineGenerateParams,
    onTokens?: OnTokens,
  ): Promise<GenerationResult> {
    this.pipelineWaiting++;
    const run = this.pipelineQueue.then(async () => {
      this.pipelineWaiting--;
      this.pipelineRunning++;
      try {
        if (params.signal?.aborted) return cancelledBeforeStart(name, ids.length);
        params.onAdmitted?.();
        return await this.run(await this.pipeline(name, params.stages), ids, params, onTokens);
      } finally {
        this.pipelineRunning--;
      }
    });
    this.pipelineQueue = run.catch(() => undefined);
    return run;
  }

  /** One generation on `decoder`, ending at the model's end ids. */
  private run(decoder: Decoder, ids: Int32Array, params: EngineGenerateParams, onTokens?: OnTokens) {
    return runGeneration(decoder, this.tokenizer, ids, params, onTokens, endTokenIds(this.pkg.model.config));
  }

  /** What the served PPSD pipeline has run so far (undefined until it is built). */
  async pipelineServerStats(): Promise<PipelineServerStats | undefined> {
    const server = await this.server?.catch(() => undefined);
    return server && structuredClone(server.counts);
  }

  /** The scheduler's load (batched sequences plus pipeline generations). */
  schedulerStats(): SchedulerStats {
    const batch = this.scheduler?.stats();
    const running = batch?.running ?? 0;
    return {
      running: running + this.pipelineRunning,
      // accepted and not running: queued for a slot, or about to be (its decoder context resolving)
      waiting: this.batchedInFlight - running + this.pipelineWaiting,
      maxBatch: batch?.maxBatch ?? 1,
      kvUsedBytes: batch?.kvUsedBytes ?? 0,
      kvBudgetBytes: batch?.kvBudgetBytes ?? 0,
      stepsByBatchSize: withPipelineSteps(batch?.stepsByBatchSize ?? {}, this.servedPipeline),
    };
  }

  /** Refuses, before any work, options this decoder would not honour (none is silently ignored). */
  private checkParams(name: DecoderName, p: EngineGenerateParams): void {
    if (p.stages !== undefined) {
      if (!PIPELINES.includes(name))
        throw new RangeError(`stages applies to the pipeline decoders (ppsd, spd), not ${name}`);
      if (!(Number.isInteger(p.stages) && p.stages >= 2 && p.stages <= this.maxStages))
        throw new RangeError(`stages must be an integer in [2, ${this.maxStages}] here, got ${p.stages}`);
    }
    if (p.draftLength !== undefined && !BLOCK_DRAFTERS.includes(name))
      throw new RangeError(`draftLength applies to the block drafters (eesd, dv), not ${name}`);
    const vocab = this.pkg.model.config.vocabSize;
    for (const id of biasMap(p.logitBias)?.keys() ?? []) {
      if (!(Number.isInteger(id) && id >= 0 && id < vocab))
        throw new RangeError(`logit bias names token ${id}, outside the vocabulary [0, ${vocab})`);
    }
  }

  /** Makes `name` ready: its context resolved (batched) or its pipeline built (ppsd, spd). */
  private async prepare(name: DecoderName): Promise<void> {
    if (this.serves(name)) await this.pipelineServer();
    else if (this.scheduler && BATCHED.includes(name)) await this.context(name);
    else await this.pipeline(name);
  }

  private context(name: DecoderName): Promise<DecoderContext> {
    let ctx = this.contexts.get(name);
    if (!ctx) {
      ctx = decoderContext(name, this.pkg, this.options);
      this.contexts.set(name, ctx);
      ctx.catch(() => this.contexts.delete(name));
    }
    return ctx;
  }

  /**
   * Pipeline decoders are built on first use: each owns its own stages (sessions and KV caches). A
   * pipeline of another depth than the plan's is a decoder of its own.
   */
  private pipeline(name: DecoderName, stages?: number): Promise<Decoder> {
    if (stages === this.planStages) stages = undefined;
    const key = stages === undefined ? name : `${name}:${stages}`;
    let decoder = this.pipelines.get(key);
    if (!decoder) {
      const plan = stages === undefined ? this.options : { ...this.options, stages };
      decoder = openDecoder(name, this.pkg, plan);
      this.pipelines.set(key, decoder);
      decoder.catch(() => this.pipelines.delete(key));
    }
    return decoder;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.pipelineQueue, ...this.batched]);
    const decoders = await Promise.allSettled(this.pipelines.values());
    this.pipelines.clear();
    await Promise.all(decoders.map((d) => (d.status === 'fulfilled' ? d.value.close() : undefined)));
    const server = await this.server?.catch(() => undefined);
    this.server = undefined;
    this.servedPipeline = undefined;
    await Promise.all([server?.close(), ...[...this.brokenServers].map((s) => s.close())]);
    this.brokenServers.clear();
    await this.scheduler?.close();
  }
}

/**
 * The batched steps by batch size, plus the served pipeline's: one pipeline step per step of its last
 * stage (where every token ends), so `ppsd:batch_size` covers both.
 */
function withPipelineSteps(steps: Record<number, number>, server?: PipelineServer): Record<number, number> {
  const last = server?.counts.stepsByBatchSize.at(-1);
  if (!last) return { ...steps };
  const out = { ...steps };
  for (const [n, c] of Object.entries(last)) out[Number(n)] = (out[Number(n)] ?? 0) + c;
  return out;
}

/** The result of a generation cancelled while it waited: no tokens, nothing computed. */
function cancelledBeforeStart(decoder: DecoderName, promptTokens: number): GenerationResult {
  const stats = startStats({} as Parameters<typeof startStats>[0], decoder);
  return {
    text: '',
    tokens: [],
    promptTokens,
    completionTokens: 0,
    finishReason: 'cancelled',
    stats,
    timings: { firstTokenMs: 0, totalMs: 0, tokensPerSecond: 0 },
  };
}
