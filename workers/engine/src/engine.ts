import type { Decoder, DecoderName } from './decode/decoder';
import { type DecoderPlan, openDecoder } from './decoders';
import {
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
}

export interface EngineGenerateParams extends GenerateParams {
  decoder?: DecoderName;
}

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
  private readonly decoders = new Map<DecoderName, Promise<Decoder>>();
  private queue: Promise<unknown> = Promise.resolve();

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
    const run = this.queue.then(async () => {
      const decoder = await this.decoder(params.decoder ?? this.defaultDecoder);
      return runGeneration(
        decoder,
        this.tokenizer,
        ids,
        params,
        onTokens,
        endTokenIds(this.pkg.model.config),
      );
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Decoders are built on first use: each owns its own stages (sessions and KV caches). */
  private decoder(name: DecoderName): Promise<Decoder> {
    let decoder = this.decoders.get(name);
    if (!decoder) {
      decoder = openDecoder(name, this.pkg, this.options);
      this.decoders.set(name, decoder);
      decoder.catch(() => this.decoders.delete(name));
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
