import { type Decoder, type SpeculationStats, startStats } from '../decode/decoder';
import { Sampler } from '../decode/sampling';
import type { Tokenizer } from '../tokenizer';
import { StopText } from './stop-text';

export interface GenerateParams {
  maxTokens: number;
  temperature?: number; // default 0 (greedy)
  topP?: number; // default 1
  seed?: number; // default 0
  stop?: string[];
  signal?: AbortSignal;
}

/** A batch of verified tokens and the text they complete (UTF-8 safe; may be empty while held back). */
export interface TokenEvent {
  index: number; // completion index of ids[0]
  ids: number[];
  text: string;
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerationResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  completionTokens: number;
  finishReason: FinishReason;
  stats: SpeculationStats;
  timings: { firstTokenMs: number; totalMs: number; tokensPerSecond: number };
}

export type OnTokens = (event: TokenEvent) => void | Promise<void>;

/**
 * One generation: runs a decoder over the prompt and turns its verified token ids into text, applying
 * end-of-sequence, stop sequences, max_tokens and cancellation. The decoder is told to stop (generator
 * return) as soon as the result is decided, so it never works past what the client will see.
 */
export async function runGeneration(
  decoder: Decoder,
  tokenizer: Tokenizer,
  prompt: Int32Array,
  params: GenerateParams,
  onTokens?: OnTokens,
  /** Ids that end the generation (the model's eos ids); default EOS and BOS, as llama2.c stops. */
  endIds: Iterable<number> = [tokenizer.eosId, tokenizer.bosId],
): Promise<GenerationResult> {
  const started = performance.now();
  const sampler = new Sampler({
    temperature: params.temperature ?? 0,
    topP: params.topP ?? 1,
    seed: params.seed ?? 0,
  });
  const endTokens = new Set(endIds);
  const stopText = new StopText(params.stop ?? []);
  const textDecoder = tokenizer.createStreamDecoder(prompt[prompt.length - 1]);
  const tokens: number[] = [];
  let text = '';
  let finishReason: FinishReason = 'length';
  let firstTokenMs = 0;

  const request = { prompt, maxTokens: params.maxTokens, sampler, signal: params.signal };
  const stats: SpeculationStats = startStats(request, decoder.name);
  const steps = decoder.decode({ ...request, stats });
  try {
    while (true) {
      const step = await steps.next();
      if (step.done) break;
      if (tokens.length === 0) firstTokenMs = performance.now() - started;
      const ids: number[] = [];
      let delta = '';
      for (const id of step.value) {
        if (endTokens.has(id)) {
          finishReason = 'stop';
          break;
        }
        ids.push(id);
        delta += stopText.push(textDecoder.push(id));
        if (stopText.stopped) {
          finishReason = 'stop';
          break;
        }
        if (tokens.length + ids.length >= params.maxTokens) break;
      }
      const done = finishReason === 'stop' || tokens.length + ids.length >= params.maxTokens;
      if (ids.length > 0 || delta) {
        const event = { index: tokens.length, ids, text: delta };
        tokens.push(...ids);
        text += delta;
        await onTokens?.(event);
      }
      if (done) break;
      if (params.signal?.aborted) break;
    }
  } finally {
    await steps.return(stats); // tells the decoder to stop and leave its stages reusable
  }
  if (params.signal?.aborted && finishReason === 'length' && tokens.length < params.maxTokens) {
    finishReason = 'cancelled';
  }
  if (!stopText.stopped) {
    // Bytes of an unfinished UTF-8 character and text held back as a possible stop-sequence prefix.
    let tail = stopText.push(textDecoder.flush());
    if (stopText.stopped) finishReason = 'stop';
    else tail += stopText.flush();
    if (tail) {
      text += tail;
      await onTokens?.({ index: tokens.length, ids: [], text: tail });
    }
  }
  const totalMs = performance.now() - started;
  return {
    text,
    tokens,
    promptTokens: prompt.length,
    completionTokens: tokens.length,
    finishReason,
    stats,
    timings: { firstTokenMs, totalMs, tokensPerSecond: tokens.length / (totalMs / 1000) },
  };
}
