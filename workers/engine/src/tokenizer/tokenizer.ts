/** Text <-> token ids. Every tokenizer the engine loads (llama2.c tokenizer.bin, HF tokenizer.json) has this shape. */
export interface Tokenizer {
  readonly kind: 'llama2c' | 'hf';
  /** Number of ids the tokenizer can produce (ids are 0 .. vocabSize-1). */
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /**
   * The most characters (UTF-16 units) of input text one token can stand for: the longest vocabulary
   * piece. A text of n characters has at least n / maxPieceChars tokens (normalizers aside), which lets a
   * server refuse a prompt far beyond the context without paying for its tokenization.
   */
  readonly maxPieceChars: number;
  /** Whether a prompt starts with BOS (llama2.c, Llama, Mistral: yes; Qwen: no). */
  readonly addsBos: boolean;
  /** Token ids of `text`, without BOS; special tokens written in the text are matched whole. */
  encode(text: string): number[];
  /** The ids a prompt is fed as: `promptIds` (BOS where the tokenizer adds one, never twice). */
  encodePrompt(text: string): number[];
  /**
   * The text of `ids` read as the start of a sequence (as if right after BOS): the first piece's
   * leading space is dropped and control tokens (BOS, EOS, UNK) print nothing.
   */
  decode(ids: number[]): string;
  /**
   * The bytes token `id` stands for inside a text (no leading-space strip; a byte token's one byte); a
   * control token's name (`<s>`, `</s>`, ...), as OpenAI's logprobs show special tokens.
   */
  tokenBytes(id: number): Uint8Array;
  /**
   * Incremental decoding of generated tokens. `prevToken` is the last token of the context the
   * generated tokens follow (normally the prompt's last token); omitted, the tokens start a sequence.
   * The concatenated deltas equal the text of the tokens in that context, and no delta ends in half a
   * UTF-8 character: incomplete bytes are held back until the next push or flush.
   */
  createStreamDecoder(prevToken?: number): StreamDecoder;
}

export interface StreamDecoder {
  /** Adds one token; returns the text it completes (possibly empty). */
  push(id: number): string;
  /** Returns whatever text is still held back (an incomplete UTF-8 sequence decodes to U+FFFD). */
  flush(): string;
}

/**
 * A prompt's ids: BOS (when the tokenizer adds one) and the text's ids. A prompt that already begins
 * with BOS, as a chat template that writes `<|begin_of_text|>` or `<s>` renders it, gets no second one.
 */
export function promptIds(t: Pick<Tokenizer, 'addsBos' | 'bosId' | 'encode'>, text: string): number[] {
  const ids = t.encode(text);
  return t.addsBos && ids[0] !== t.bosId ? [t.bosId, ...ids] : ids;
}
