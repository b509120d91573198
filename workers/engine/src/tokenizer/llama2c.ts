/**
 * llama2.c's tokenizer.bin (int32 max_token_length, then per token: float32 score, int32 length, bytes),
 * encoding and decoding exactly like llama2.c's run.c `encode` / `decode`:
 *
 * - encode: a dummy-prefix " " piece when the text is non-empty; each UTF-8 codepoint becomes its piece,
 *   or its bytes as <0xXX> tokens (id = byte + 3) when the vocabulary lacks it; then, repeatedly, the
 *   adjacent pair whose concatenation is a piece with the highest score is merged (leftmost on ties).
 *   run.c rescans every pair per merge (quadratic); here a heap ordered by (score desc, position asc)
 *   picks the same pair each step, so results are identical and long prompts stay fast.
 * - decode: a piece right after BOS drops its leading space; <0xXX> pieces are raw bytes. Pieces are
 *   kept as bytes, so text is only formed from complete UTF-8 sequences.
 */
import { readFile } from 'node:fs/promises';
import { promptIds, type StreamDecoder, type Tokenizer } from './tokenizer';

export const LLAMA2C_UNK = 0;
export const LLAMA2C_BOS = 1;
export const LLAMA2C_EOS = 2;
const BYTE_PIECE_OFFSET = 3; // <0x00> is id 3 in every SentencePiece-exported llama2.c vocabulary
// run.c starts its best score at -1e10 and merges only strictly better pairs.
const MIN_MERGE_SCORE = -1e10;

export async function readLlama2cTokenizer(path: string): Promise<Llama2cTokenizer> {
  return Llama2cTokenizer.parse(await readFile(path), path);
}

export class Llama2cTokenizer implements Tokenizer {
  readonly kind = 'llama2c' as const;
  readonly bosId = LLAMA2C_BOS;
  readonly eosId = LLAMA2C_EOS;
  readonly addsBos = true; // run.c feeds BOS first
  readonly vocabSize: number;
  /** A piece of k bytes covers at most k input characters. */
  readonly maxPieceChars: number;
  /** Pieces as byte strings (one char per byte, code < 256): exact map keys, cheap concatenation. */
  private readonly keys: string[];
  private readonly idOf = new Map<string, number>();
  /** The raw byte an id stands for when its piece is <0xXX>, else -1. */
  private readonly rawByte: Int16Array;

  private constructor(
    readonly pieces: Uint8Array[],
    readonly scores: Float32Array,
    readonly maxTokenLength: number,
  ) {
    this.vocabSize = pieces.length;
    this.maxPieceChars = Math.max(1, ...pieces.map((p) => p.length));
    this.keys = pieces.map((p) => Buffer.from(p).toString('latin1'));
    // run.c binary-searches a sorted copy; with duplicate pieces (none in real vocabularies) the first id wins here.
    this.keys.forEach((k, id) => {
      if (!this.idOf.has(k)) this.idOf.set(k, id);
    });
    this.rawByte = new Int16Array(pieces.length).fill(-1);
    this.keys.forEach((k, id) => {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(k);
      if (m) this.rawByte[id] = Number.parseInt(m[1], 16);
    });
  }

  static parse(buf: Buffer, source = 'tokenizer.bin'): Llama2cTokenizer {
    const fail = (why: string): never => {
      throw new Error(`${source}: not a llama2.c tokenizer.bin: ${why}`);
    };
    if (buf.length < 4) fail(`${buf.length} bytes is too short`);
    const maxTokenLength = buf.readInt32LE(0);
    if (maxTokenLength <= 0 || maxTokenLength > 1 << 16)
      fail(`implausible max_token_length ${maxTokenLength}`);
    const pieces: Uint8Array[] = [];
    const scores: number[] = [];
    let at = 4;
    while (at < buf.length) {
      if (at + 8 > buf.length) fail(`truncated entry header for token ${pieces.length} at byte ${at}`);
      const score = buf.readFloatLE(at);
      const len = buf.readInt32LE(at + 4);
      at += 8;
      if (len < 0 || len > maxTokenLength || at + len > buf.length) {
        fail(
          `token ${pieces.length} at byte ${at - 8} has length ${len} (max ${maxTokenLength}, ${buf.length - at} bytes left)`,
        );
      }
      pieces.push(Uint8Array.prototype.slice.call(buf, at, at + len));
      scores.push(score);
      at += len;
    }
    if (pieces.length <= BYTE_PIECE_OFFSET + 255)
      fail(`only ${pieces.length} tokens; expected control and byte pieces`);
    return new Llama2cTokenizer(pieces, Float32Array.from(scores), maxTokenLength);
  }

  encodePrompt(text: string): number[] {
    return promptIds(this, text);
  }

  encode(text: string): number[] {
    if (text.length === 0) return [];
    const bytes = Buffer.from(text, 'utf8');
    const ids: number[] = [this.idOf.get(' ') ?? ' '.charCodeAt(0) + BYTE_PIECE_OFFSET];
    // Codepoints, exactly as run.c groups bytes (a lead byte plus at most three continuation bytes).
    let start = 0;
    for (let i = 0; i < bytes.length; i++) {
      if ((bytes[i] & 0xc0) !== 0x80) start = i;
      const next = i + 1 < bytes.length ? bytes[i + 1] : 0;
      if ((next & 0xc0) === 0x80 && i + 1 - start < 4) continue;
      const key = bytes.toString('latin1', start, i + 1);
      const id = this.idOf.get(key);
      if (id !== undefined) ids.push(id);
      else for (let b = start; b <= i; b++) ids.push(bytes[b] + BYTE_PIECE_OFFSET);
      start = i + 1;
    }
    return this.mergePairs(ids);
  }

  private mergePairs(initial: number[]): number[] {
    const n = initial.length;
    const id = Int32Array.from(initial);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new CandidateHeap();
    const consider = (left: number) => {
      const right = next[left];
      if (left < 0 || right < 0) return;
      const merged = this.idOf.get(this.keys[id[left]] + this.keys[id[right]]);
      if (merged === undefined || !(this.scores[merged] > MIN_MERGE_SCORE)) return;
      heap.push({ score: this.scores[merged], left, right, leftId: id[left], rightId: id[right], merged });
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    for (let c = heap.pop(); c; c = heap.pop()) {
      // Stale if either side has since merged into something else.
      if (!alive[c.left] || !alive[c.right] || next[c.left] !== c.right) continue;
      if (id[c.left] !== c.leftId || id[c.right] !== c.rightId) continue;
      id[c.left] = c.merged;
      alive[c.right] = 0;
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      if (prev[c.left] >= 0) consider(prev[c.left]);
      consider(c.left);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]) out.push(id[i]);
    return out;
  }

  /** Bytes `id` prints after `prev` (run.c `decode`); control tokens print nothing. */
  pieceBytes(prev: number, id: number): Uint8Array {
    if (id === LLAMA2C_UNK || id === LLAMA2C_BOS || id === LLAMA2C_EOS) return EMPTY;
    if (id < 0 || id >= this.vocabSize)
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    const raw = this.rawByte[id];
    if (raw >= 0) return Uint8Array.of(raw);
    const piece = this.pieces[id];
    return prev === LLAMA2C_BOS && piece[0] === 0x20 ? piece.subarray(1) : piece;
  }

  tokenBytes(id: number): Uint8Array {
    const control = CONTROL_NAMES[id];
    return control ? utf8Bytes.encode(control) : this.pieceBytes(-1, id);
  }

  decode(ids: number[]): string {
    const stream = this.createStreamDecoder();
    let text = '';
    for (const id of ids) text += stream.push(id);
    return text + stream.flush();
  }

  createStreamDecoder(prevToken: number = LLAMA2C_BOS): StreamDecoder {
    let prev = prevToken;
    // ignoreBOM: a generated U+FEFF is text, not a byte-order mark. stream: holds back split characters.
    let utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
    return {
      push: (id: number) => {
        const bytes = this.pieceBytes(prev, id);
        prev = id;
        return utf8.decode(bytes, { stream: true });
      },
      flush: () => {
        const rest = utf8.decode();
        utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
        return rest;
      },
    };
  }
}

const EMPTY = new Uint8Array(0);
const CONTROL_NAMES: Record<number, string> = {
  [LLAMA2C_UNK]: '<unk>',
  [LLAMA2C_BOS]: '<s>',
  [LLAMA2C_EOS]: '</s>',
};
const utf8Bytes = new TextEncoder();

interface Candidate {
  score: number;
  left: number; // index of the left symbol; symbols keep their relative order, so this is "leftmost"
  right: number;
  leftId: number;
  rightId: number;
  merged: number;
}

/** Binary max-heap on (score, then smaller left index). */
class CandidateHeap {
  private readonly items: Candidate[] = [];

  private static before(a: Candidate, b: Candidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }

  push(c: Candidate): void {
    const items = this.items;
    items.push(c);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!CandidateHeap.before(items[i], items[parent])) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }

  pop(): Candidate | undefined {
    const items = this.items;
    if (items.length === 0) return undefined;
    const top = items[0];
    const last = items.pop()!;
    if (items.length > 0) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < items.length && CandidateHeap.before(items[l], items[best])) best = l;
        if (r < items.length && CandidateHeap.before(items[r], items[best])) best = r;
        if (best === i) break;
        [items[i], items[best]] = [items[best], items[i]];
        i = best;
      }
    }
    return top;
  }
}
