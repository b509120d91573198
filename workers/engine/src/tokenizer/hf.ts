/**
 * Hugging Face tokenizer.json through @huggingface/tokenizers, behind the engine's Tokenizer interface.
 */
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { promptIds, type StreamDecoder, type Tokenizer } from './tokenizer';

export interface HfTokenizerOptions {
  /** Override the BOS/EOS ids (e.g. from the model config); otherwise taken from tokenizer_config.json
   *  next to the file, or from well-known special tokens. */
  bosId?: number;
  eosId?: number;
  /** Whether prompts start with BOS; otherwise `add_bos_token` of tokenizer_config.json when it says,
   *  else what tokenizer.json's post-processor adds (Llama's TemplateProcessing does, Qwen's has none). */
  addBos?: boolean;
}

const BOS_NAMES = ['<s>', '<|begin_of_text|>', '<bos>', '<|startoftext|>', '<|endoftext|>'];
const EOS_NAMES = ['</s>', '<|end_of_text|>', '<eos>', '<|endoftext|>', '<|im_end|>'];
const REPLACEMENT_CHAR = '\uFFFD';

export async function loadHfTokenizer(file: string, options: HfTokenizerOptions = {}): Promise<HfTokenizer> {
  let json: HfTokenizerJson;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: cannot read tokenizer.json (${(err as Error).message})`);
  }
  const configPath = path.join(path.dirname(file), 'tokenizer_config.json');
  let config: Record<string, unknown> = {};
  if (await exists(configPath)) {
    try {
      config = JSON.parse(await readFile(configPath, 'utf8'));
    } catch (err) {
      throw new Error(`${configPath}: not valid JSON (${(err as Error).message})`);
    }
  }
  return new HfTokenizer(json, config, options, file);
}

/** The parts of tokenizer.json this wrapper looks at itself. */
export interface HfTokenizerJson {
  added_tokens?: { id: number; content: string; special?: boolean }[];
  model: { type?: string; vocab?: Record<string, number> | [string, number][] };
  [key: string]: unknown;
}

export class HfTokenizer implements Tokenizer {
  readonly kind = 'hf' as const;
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /** Byte-level pieces spell one byte per character, SentencePiece ones one character (▁ for a space). */
  readonly maxPieceChars: number;
  readonly addsBos: boolean;
  private readonly impl: HfTokenizerImpl;
  /** GPT-2 style byte-level vocabulary: each byte is spelled by one printable character. */
  private readonly byteLevel: boolean;
  private readonly special: Set<number>;

  constructor(
    json: HfTokenizerJson,
    config: Record<string, unknown>,
    options: HfTokenizerOptions = {},
    source = 'tokenizer.json',
  ) {
    // tokenizers.js needs these fields present; a missing list means "none".
    const normalized = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...json,
    };
    try {
      this.impl = new HfTokenizerImpl(normalized, config);
    } catch (err) {
      throw new Error(`${source}: unsupported or invalid tokenizer.json (${(err as Error).message})`);
    }
    keepByteOrderMarks(this.impl.decoder);
    const vocab = this.impl.get_vocab(true);
    let maxId = -1;
    let maxPieceChars = 1;
    for (const [piece, id] of vocab) {
      maxId = Math.max(maxId, id);
      maxPieceChars = Math.max(maxPieceChars, piece.length);
    }
    this.maxPieceChars = maxPieceChars;
    this.vocabSize = maxId + 1;
    this.byteLevel = JSON.stringify(json.decoder ?? null).includes('"ByteLevel"');
    this.special = new Set((json.added_tokens ?? []).filter((t) => t.special).map((t) => t.id));
    this.bosId = options.bosId ?? this.specialId(config.bos_token, BOS_NAMES) ?? -1;
    this.eosId = options.eosId ?? this.specialId(config.eos_token, EOS_NAMES) ?? -1;
    const configured = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : undefined;
    this.addsBos = options.addBos ?? configured ?? this.postProcessorAddsBos();
  }

  /** Whether encoding with special tokens puts BOS in front (the post-processor's template). */
  private postProcessorAddsBos(): boolean {
    if (this.bosId < 0) return false;
    const plain = this.impl.encode('a', { add_special_tokens: false }).ids;
    const full = this.impl.encode('a', { add_special_tokens: true }).ids;
    return full.length > plain.length && full[0] === this.bosId;
  }

  encodePrompt(text: string): number[] {
    return promptIds(this, text);
  }

  private specialId(configured: unknown, wellKnown: string[]): number | undefined {
    const name =
      typeof configured === 'string' ? configured : (configured as { content?: string } | undefined)?.content;
    for (const candidate of name ? [name] : wellKnown) {
      const id = this.impl.token_to_id(candidate);
      if (id !== undefined) return id;
    }
    return undefined;
  }

  encode(text: string): number[] {
    return this.impl.encode(text, { add_special_tokens: false }).ids;
  }

  tokenBytes(id: number): Uint8Array {
    const token = this.impl.id_to_token(id);
    if (token === undefined)
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
    if (byte && !this.special.has(id)) return Uint8Array.of(Number.parseInt(byte[1], 16));
    if (this.byteLevel && !this.special.has(id)) return Uint8Array.from(token, (ch) => byteOfChar(ch));
    return utf8.encode(this.special.has(id) ? token : token.replaceAll('\u2581', ' '));
  }

  decode(ids: number[]): string {
    if (ids.length === 0) return '';
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      }
    }
    return this.impl.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  /**
   * Decodes a sliding window of tokens and emits the growth of its text, holding back text that ends
   * in U+FFFD (bytes of a character still to come). The window starts one emitted chunk back so
   * context-dependent decoding (e.g. a leading-space strip) applies identically to both decodes.
   */
  createStreamDecoder(prevToken?: number): StreamDecoder {
    const tokens: number[] = prevToken === undefined ? [] : [prevToken];
    let prefixOffset = 0; // start of the window
    let readOffset = tokens.length; // tokens before this have been emitted
    const emitNew = (final: boolean): string => {
      const prefixText = this.decode(tokens.slice(prefixOffset, readOffset));
      const newText = this.decode(tokens.slice(prefixOffset));
      if (newText.length <= prefixText.length || (!final && newText.endsWith(REPLACEMENT_CHAR))) return '';
      // Slide the window: drop tokens that no later decode looks at.
      tokens.splice(0, readOffset);
      prefixOffset = 0;
      readOffset = tokens.length;
      return newText.slice(prefixText.length);
    };
    return {
      push: (id: number) => {
        tokens.push(id);
        return emitNew(false);
      },
      flush: () => emitNew(true),
    };
  }
}

const utf8 = new TextEncoder();

/** GPT-2's bytes_to_unicode, inverted: printable Latin-1 bytes spell themselves, the rest 256 + n. */
const BYTE_OF_CHAR = (() => {
  const map = new Map<number, number>();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    map.set(printable ? b : 256 + n++, b);
  }
  return map;
})();

function byteOfChar(ch: string): number {
  const b = BYTE_OF_CHAR.get(ch.codePointAt(0)!);
  if (b === undefined) throw new Error(`byte-level token character ${JSON.stringify(ch)} maps to no byte`);
  return b;
}

/**
 * tokenizers.js' ByteFallback decoder uses a default TextDecoder, which deletes a U+FEFF that starts a
 * run of byte tokens; the Rust library (and llama2.c) keep it. Swap in a decoder that keeps it.
 */
function keepByteOrderMarks(decoder: unknown): void {
  if ((typeof decoder !== 'object' && typeof decoder !== 'function') || decoder === null) return; // decoders are callables
  const d = decoder as { text_decoder?: unknown; decoders?: unknown[] };
  if (d.text_decoder instanceof TextDecoder) d.text_decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  for (const inner of d.decoders ?? []) keepByteOrderMarks(inner);
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
