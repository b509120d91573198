import type { Decoder, DecoderName } from './decode/decoder';
import { type DecoderPlan, openDecoder } from './decoders';
import {
  biasMap,
  type GenerateParams,
  type GenerationResult,
  type OnTokens,
  runGeneration,
} from './generate/generate';
import { endTokenIds } from './model/llama';
import { type LoadedPackage, loadPackage } from './package';
import type { Tokenizer } from './tokenizer';

export interface EngineOptions extends DecoderPlan {
  /** Decoder used when a request names none. */
  decoder?: DecoderName;
  /** Skip checksum verification (only for packages verified moments ago by the caller). */
  verified?: boolean;
  /** Most sequences one batched step runs together (default DEFAULT_MAX_BATCH). */
  maxBatch?: number;
  /** Bytes the KV pool may hold across running sequences (default: DEFAULT_KV_SHARE of RAM). */
  kvMemoryBytes?: number;
}

export interface EngineGenerateParams extends GenerateParams {
  decoder?: DecoderName;
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
 * A loaded model package and its decoders: the one object the CLI and the worker generate through.
 * It serves one generation at a time (each decoder owns KV caches); concurrent calls queue in order.
 */
export class Engine {
  /** Built decoders by name, pipelines by name and depth ('ppsd:3'); at most maxStages - 1 per pipeline. */
  private readonly decoders = new Map<string, Promise<Decoder>>();
  private queue: Promise<unknown> = Promise.resolve();
  private running = 0;
  private waiting = 0;
  private steps: Record<number, number> = {};

  private constructor(
    readonly pkg: LoadedPackage,
    private readonly options: EngineOptions,
  ) {}

  static async open(packageDir: string, options: EngineOptions = {}): Promise<Engine> {
    const pkg = await loadPackage(packageDir, { verify: !options.verified });
    const engine = new Engine(pkg, options);
    await engine.decoder(options.decoder ?? 'ar'); // fail at open, not at the first request
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
    const name = params.decoder ?? this.defaultDecoder;
    this.checkParams(name, params);
    this.waiting++;
    const run = this.queue.then(async () => {
      this.waiting--;
      this.running++;
      this.steps[1] = (this.steps[1] ?? 0) + 1;
      params.onAdmitted?.();
      const decoder = await this.decoder(name, params.stages);
      return runGeneration(
        decoder,
        this.tokenizer,
        ids,
        params,
        onTokens,
        endTokenIds(this.pkg.model.config),
      );
    });
    const settled = run.finally(() => this.running--);
    this.queue = settled.catch(() => undefined);
    return settled;
  }

  /** The scheduler's load (interim: one sequence at a time). */
  schedulerStats(): SchedulerStats {
    return {
      running: this.running,
      waiting: this.waiting,
      maxBatch: 1,
      kvUsedBytes: 0,
      kvBudgetBytes: 0,
      stepsByBatchSize: { ...this.steps },
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

  /**
   * Decoders are built on first use: each owns its own stages (sessions and KV caches). A pipeline of
   * another depth than the plan's is a decoder of its own.
   */
  private decoder(name: DecoderName, stages?: number): Promise<Decoder> {
    if (stages === this.planStages) stages = undefined;
    const key = stages === undefined ? name : `${name}:${stages}`;
    let decoder = this.decoders.get(key);
    if (!decoder) {
      const plan = stages === undefined ? this.options : { ...this.options, stages };
      decoder = openDecoder(name, this.pkg, plan);
      this.decoders.set(key, decoder);
      decoder.catch(() => this.decoders.delete(key));
    }
    return decoder;
  }

  async close(): Promise<void> {
    await this.queue;
    const decoders = await Promise.allSettled(this.decoders.values());
    this.decoders.clear();
    await Promise.all(decoders.map((d) => (d.status === 'fulfilled' ? d.value.close() : undefined)));
  }
}
