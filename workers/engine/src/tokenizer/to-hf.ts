/**
 * SentencePiece-style vocabularies (a llama2.c tokenizer.bin, or GGUF's `llama` tokenizer metadata) as an
 * equivalent Hugging Face tokenizer.json in the Llama style: a BPE model with byte fallback whose merges are every split of a piece into two
 * pieces, ranked by the merged piece's score (as transformers' SentencePieceExtractor does); a
 * Prepend("▁") + Replace(" ", "▁") normalizer (llama2.c's dummy prefix); and a
 * Replace/ByteFallback/Fuse/Strip decoder.
 *
 * Known difference: HF splits literal special-token text ("<s>") out of the input; llama2.c encodes it as
 * ordinary text.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { LLAMA2C_BOS, LLAMA2C_EOS, LLAMA2C_UNK, Llama2cTokenizer } from './llama2c';

export const SPACE_MARK = '\u2581'; // "▁", SentencePiece's visible space
const CONTROL_PIECES: Record<number, string> = {
  [LLAMA2C_UNK]: '<unk>',
  [LLAMA2C_BOS]: '<s>',
  [LLAMA2C_EOS]: '</s>',
};
const MIN_MERGE_SCORE = -1e10; // llama2.c never merges into pieces scored at or below this

export async function convertLlama2cTokenizerFile(binPath: string, jsonPath: string): Promise<void> {
  const tokenizer = Llama2cTokenizer.parse(await readFile(binPath), binPath);
  await writeFile(jsonPath, JSON.stringify(llama2cToHfJson(tokenizer)));
}

export function llama2cToHfJson(tok: Llama2cTokenizer) {
  const pieces = hfPieces(tok);
  const types = (id: number) =>
    id === LLAMA2C_UNK
      ? TOKEN_TYPE.UNKNOWN
      : id in CONTROL_PIECES
        ? TOKEN_TYPE.CONTROL
        : /^<0x[0-9A-Fa-f]{2}>$/.test(pieces[id])
          ? TOKEN_TYPE.BYTE
          : TOKEN_TYPE.NORMAL;
  return sentencePieceToHfJson(
    {
      tokens: pieces,
      scores: tok.scores,
      types,
      bosId: LLAMA2C_BOS,
      unknownId: LLAMA2C_UNK,
      byteFallback: true,
    },
    'tokenizer.bin',
  );
}

/** SentencePiece token types (as GGUF's tokenizer.ggml.token_type and sentencepiece's model proto). */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** A SentencePiece-style vocabulary: pieces with "▁" for spaces, scores, and a type per id. */
export interface SentencePieceVocab {
  tokens: string[];
  scores?: ArrayLike<number>;
  types: (id: number) => number;
  bosId: number;
  unknownId?: number;
  /** Prepend BOS (default true). */
  addBos?: boolean;
  /** The dummy-prefix space (default true). */
  addSpacePrefix?: boolean;
  /** Byte fallback in the model and decoder (default: when the vocabulary has byte pieces). */
  byteFallback?: boolean;
}

/**
 * The vocabulary as a tokenizer.json: merges are every split of a piece into two mergeable pieces,
 * ranked by the merged piece's score; control, unknown and unused pieces never merge.
 */
export function sentencePieceToHfJson(v: SentencePieceVocab, where: string) {
  const vocab = uniqueVocab(v.tokens, where);
  const score = (id: number) => v.scores?.[id] ?? 0;
  const mergeable = (id: number | undefined) => {
    if (id === undefined) return false;
    const t = v.types(id);
    return t !== TOKEN_TYPE.CONTROL && t !== TOKEN_TYPE.UNKNOWN && t !== TOKEN_TYPE.UNUSED;
  };
  const merges: { left: string; right: string; score: number }[] = [];
  v.tokens.forEach((piece, id) => {
    if (!mergeable(id) || !(score(id) > MIN_MERGE_SCORE)) return;
    const chars = Array.from(piece);
    const local: { left: string; right: string; score: number }[] = [];
    for (let i = 1; i < chars.length; i++) {
      const left = chars.slice(0, i).join('');
      const right = chars.slice(i).join('');
      if (mergeable(vocab.get(left)) && mergeable(vocab.get(right)))
        local.push({ left, right, score: score(id) });
    }
    local.sort(
      (a, b) => vocab.get(a.left)! - vocab.get(b.left)! || vocab.get(a.right)! - vocab.get(b.right)!,
    );
    merges.push(...local);
  });
  // Stable: ties keep piece-id order, then the split order above.
  merges.sort((a, b) => b.score - a.score);

  const prefix = v.addSpacePrefix !== false;
  const bos = v.tokens[v.bosId];
  const bytes = v.byteFallback ?? v.tokens.some((_, id) => v.types(id) === TOKEN_TYPE.BYTE);
  const replaceSpaces = { type: 'Replace', pattern: { String: ' ' }, content: SPACE_MARK };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens(v.tokens, v.types),
    normalizer: {
      type: 'Sequence',
      normalizers: prefix ? [{ type: 'Prepend', prepend: SPACE_MARK }, replaceSpaces] : [replaceSpaces],
    },
    pre_tokenizer: null,
    post_processor: v.addBos === false ? null : bosTemplateProcessor(bos, v.bosId),
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE_MARK }, content: ' ' },
        ...(bytes ? [{ type: 'ByteFallback' }] : []),
        { type: 'Fuse' },
        ...(prefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: v.unknownId !== undefined ? v.tokens[v.unknownId] : null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: bytes,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges: merges.map((m) => [m.left, m.right]),
    },
  };
}

/** Piece -> id, refusing a piece that appears twice (tokenizer.json maps each piece to one id). */
export function uniqueVocab(tokens: string[], where: string): Map<string, number> {
  // A Map, not an object: pieces such as "__proto__" or "toString" must be plain keys.
  const vocab = new Map<string, number>();
  tokens.forEach((p, id) => {
    if (vocab.has(p))
      throw new Error(`${where}: piece ${JSON.stringify(p)} appears twice (ids ${vocab.get(p)} and ${id})`);
    vocab.set(p, id);
  });
  return vocab;
}

/** Control and unknown pieces as special added tokens, user-defined ones as plain added tokens. */
export function addedTokens(tokens: string[], types: (id: number) => number) {
  const out: {
    id: number;
    content: string;
    single_word: boolean;
    lstrip: boolean;
    rstrip: boolean;
    normalized: boolean;
    special: boolean;
  }[] = [];
  tokens.forEach((content, id) => {
    const t = types(id);
    if (t !== TOKEN_TYPE.CONTROL && t !== TOKEN_TYPE.UNKNOWN && t !== TOKEN_TYPE.USER_DEFINED) return;
    out.push({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: t !== TOKEN_TYPE.USER_DEFINED,
    });
  });
  return out;
}

/** Each piece as HF spells it: control tokens by name, spaces as "▁". */
function hfPieces(tok: Llama2cTokenizer): string[] {
  const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  return tok.pieces.map((bytes, id) => {
    if (id in CONTROL_PIECES) return CONTROL_PIECES[id];
    let text: string;
    try {
      text = utf8.decode(bytes);
    } catch {
      throw new Error(
        `tokenizer.bin: piece ${id} is not valid UTF-8; it cannot be expressed in tokenizer.json`,
      );
    }
    return text.replaceAll(' ', SPACE_MARK);
  });
}

/** tokenizer.json's post-processor that starts every sequence (and each of a pair) with `bos`. */
export function bosTemplateProcessor(bos: string, bosId: number) {
  return {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: bos, type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: bos, type_id: 1 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
  };
}
