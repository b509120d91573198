import {
  type ControlledAcceptance,
  type Decoder,
  type SpeculationStats,
  startStats,
} from '../decode/decoder';
import { type IdLogprob, type IdLogprobs, type TokenLogprob, tokenString } from '../decode/logprobs';
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
  /** Token id -> added to its logit (OpenAI logit_bias; JSON objects have string keys, read as ids). */
  logitBias?: Readonly<Record<number, number>>;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Report each token's raw log-probability (decode/logprobs.ts) with this many top alternatives. */
  logprobs?: number;
  /** EESD / DV: fixed draft block length for this generation. */
  draftLength?: number;
  /**
   * Benchmarks on random-weight models only (decode/decoder.ts DecodeRequest): the speculative
   * decoders' drafts are forced to be accepted at rate alpha. Never set by the service.
   */
  controlledAcceptance?: ControlledAcceptance;
}

/** A batch of verified tokens and the text they complete (UTF-8 safe; may be empty while held back). */
export interface TokenEvent {
  index: number; // completion index of ids[0]
  ids: number[];
  text: string;
  /** One entry per id, when the generation asked for logprobs. */
  logprobs?: TokenLogprob[];
  /**
   * `text` cut by the token that produced each piece, marking pieces of accepted draft tokens
   * (`draft: true`) apart from the verifier's own tokens; the texts concatenated equal `text`.
   */
  segments: TextSegment[];
}

/** Text of one token (or part of it), and whether that token was a draft the verifier accepted. */
export interface TextSegment {
  text: string;
  draft: boolean;
}

/**
 * Text waiting to be released (held back by the UTF-8 decoder or as a possible stop-sequence prefix),
 * kept per token so released text can be attributed to the tokens it came from.
 */
class Segments {
  private pending: TextSegment[] = [];
  lastDraft = false;

  push(text: string, draft: boolean): void {
    this.lastDraft = draft;
    if (text) this.pending.push({ text, draft });
  }

  /** The first `n` characters of pending text, as segments. */
  take(n: number): TextSegment[] {
    const out: TextSegment[] = [];
    while (n > 0 && this.pending.length > 0) {
      const head = this.pending[0];
      if (head.text.length <= n) {
        out.push(head);
        this.pending.shift();
        n -= head.text.length;
      } else {
        out.push({ text: head.text.slice(0, n), draft: head.draft });
        head.text = head.text.slice(n);
        n = 0;
      }
    }
    return out;
  }

  clear(): void {
    this.pending = [];
  }
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
  /** One entry per token, when asked for. */
  logprobs?: TokenLogprob[];
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
    logitBias: biasMap(params.logitBias),
    presencePenalty: params.presencePenalty,
    frequencyPenalty: params.frequencyPenalty,
    logprobs: params.logprobs,
  });
  const render = (t: IdLogprob) => {
    const bytes = tokenizer.tokenBytes(t.id);
    return { token: tokenString(bytes), bytes: Array.from(bytes), logprob: t.logprob };
  };
  const entry = (t: IdLogprobs, offset: number): TokenLogprob => ({
    ...render(t),
    offset,
    top: t.top.map(render),
  });
  const logprobs: TokenLogprob[] | undefined = params.logprobs === undefined ? undefined : [];
  let decodedChars = 0; // text the decoder has produced: where the next token's text starts
  const endTokens = new Set(endIds);
  const stopText = new StopText(params.stop ?? []);
  const textDecoder = tokenizer.createStreamDecoder(prompt[prompt.length - 1]);
  const tokens: number[] = [];
  const pending = new Segments();
  let text = '';
  let finishReason: FinishReason = 'length';
  let firstTokenMs = 0;

  const request = {
    prompt,
    maxTokens: params.maxTokens,
    sampler,
    signal: params.signal,
    draftLength: params.draftLength,
    controlledAcceptance: params.controlledAcceptance,
  };
  const stats: SpeculationStats = startStats(request, decoder.name);
  const steps = decoder.decode({ ...request, stats });
  try {
    while (true) {
      const acceptedBefore = stats.draftTokensAccepted;
      const step = await steps.next();
      if (step.done) break;
      if (tokens.length === 0) firstTokenMs = performance.now() - started;
      // A step is one verification: its accepted drafts first, then the verifier's own token.
      const drafted = stats.draftTokensAccepted - acceptedBefore;
      const ids: number[] = [];
      const stepLogprobs: TokenLogprob[] = [];
      let delta = '';
      const segments: TextSegment[] = [];
      for (const [j, id] of step.value.entries()) {
        if (endTokens.has(id)) {
          finishReason = 'stop';
          break;
        }
        // the sampler recorded every verified token in order, so entry i is completion token i
        if (logprobs) stepLogprobs.push(entry(sampler.logprobs[tokens.length + ids.length], decodedChars));
        ids.push(id);
        const piece = textDecoder.push(id);
        decodedChars += piece.length;
        pending.push(piece, j < drafted);
        const released = stopText.push(piece);
        delta += released;
        segments.push(...pending.take(released.length));
        if (stopText.stopped) {
          pending.clear();
          finishReason = 'stop';
          break;
        }
        if (tokens.length + ids.length >= params.maxTokens) break;
      }
      const done = finishReason === 'stop' || tokens.length + ids.length >= params.maxTokens;
      if (ids.length > 0 || delta) {
        const event: TokenEvent = { index: tokens.length, ids, text: delta, segments };
        if (logprobs) {
          event.logprobs = stepLogprobs;
          logprobs.push(...stepLogprobs);
        }
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
    const piece = textDecoder.flush();
    pending.push(piece, pending.lastDraft);
    let tail = stopText.push(piece);
    if (stopText.stopped) finishReason = 'stop';
    else tail += stopText.flush();
    if (tail) {
      text += tail;
      await onTokens?.({ index: tokens.length, ids: [], text: tail, segments: pending.take(tail.length) });
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
    ...(logprobs ? { logprobs } : {}),
  };
}

/** logit_bias as the Sampler takes it; a key that is no integer becomes NaN, which the Sampler refuses. */
export const biasMap = (bias: Readonly<Record<number, number>> | undefined) =>
  bias && new Map(Object.entries(bias).map(([id, b]) => [/^\d+$/.test(id) ? Number(id) : Number.NaN, b]));
