/**
 * Converts a llama2.c tokenizer.bin into an equivalent Hugging Face tokenizer.json in the Llama /
 * SentencePiece style: a BPE model with byte fallback whose merges are every split of a piece into two
 * pieces, ranked by the merged piece's score (as transformers' SentencePieceExtractor does); a
 * Prepend("▁") + Replace(" ", "▁") normalizer (llama2.c's dummy prefix); and a
 * Replace/ByteFallback/Fuse/Strip decoder.
 *
 * Known difference: HF splits literal special-token text ("<s>") out of the input; llama2.c encodes it as
 * ordinary text.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { LLAMA2C_BOS, LLAMA2C_EOS, LLAMA2C_UNK, Llama2cTokenizer } from './llama2c';

const SPACE_MARK = '\u2581'; // "▁", SentencePiece's visible space
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
  // A Map, not an object: pieces such as "__proto__" or "toString" must be plain keys.
  const vocab = new Map<string, number>();
  pieces.forEach((p, id) => {
    if (vocab.has(p))
      throw new Error(
        `tokenizer.bin: piece ${JSON.stringify(p)} appears twice (ids ${vocab.get(p)} and ${id})`,
      );
    vocab.set(p, id);
  });

  const merges: { left: string; right: string; score: number }[] = [];
  pieces.forEach((piece, id) => {
    if (id in CONTROL_PIECES || !(tok.scores[id] > MIN_MERGE_SCORE)) return;
    const chars = Array.from(piece);
    const local: { left: string; right: string; score: number }[] = [];
    for (let i = 1; i < chars.length; i++) {
      const left = chars.slice(0, i).join('');
      const right = chars.slice(i).join('');
      if (isMergeable(vocab, left) && isMergeable(vocab, right))
        local.push({ left, right, score: tok.scores[id] });
    }
    local.sort(
      (a, b) => vocab.get(a.left)! - vocab.get(b.left)! || vocab.get(a.right)! - vocab.get(b.right)!,
    );
    merges.push(...local);
  });
  // Stable: ties keep piece-id order, then the split order above.
  merges.sort((a, b) => b.score - a.score);

  const addedToken = (id: number) => ({
    id,
    content: CONTROL_PIECES[id],
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const bos = CONTROL_PIECES[LLAMA2C_BOS];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [LLAMA2C_UNK, LLAMA2C_BOS, LLAMA2C_EOS].map(addedToken),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: SPACE_MARK },
        { type: 'Replace', pattern: { String: ' ' }, content: SPACE_MARK },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [LLAMA2C_BOS], tokens: [bos] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE_MARK }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: CONTROL_PIECES[LLAMA2C_UNK],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges: merges.map((m) => [m.left, m.right]),
    },
  };
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

function isMergeable(vocab: Map<string, number>, piece: string): boolean {
  const id = vocab.get(piece);
  return id !== undefined && !(id in CONTROL_PIECES);
}
