import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HfTokenizer, loadHfTokenizer } from '../../workers/engine/src/tokenizer/hf';
import { loadTokenizer, tokenizerKindOf } from '../../workers/engine/src/tokenizer/index';
import { type Llama2cTokenizer, readLlama2cTokenizer } from '../../workers/engine/src/tokenizer/llama2c';
import { convertLlama2cTokenizerFile, llama2cToHfJson } from '../../workers/engine/src/tokenizer/to-hf';
import type { Tokenizer } from '../../workers/engine/src/tokenizer/tokenizer';
import { LLAMA2_TOKENIZER, scratchDir, TINYSTORIES_VAL, TOK512 } from '../helpers/shared';

/** A line-by-line port of llama2.c run.c `encode` (quadratic rescans), as the ground truth. */
const key = (bytes: Uint8Array) => Buffer.from(bytes).toString('latin1');
const sortedVocabs = new WeakMap<Llama2cTokenizer, Map<string, number>>();

function llama2cEncodeReference(tok: Llama2cTokenizer, text: string): number[] {
  let vocab = sortedVocabs.get(tok);
  if (!vocab) {
    vocab = new Map<string, number>();
    for (const [id, p] of tok.pieces.entries()) if (!vocab.has(key(p))) vocab.set(key(p), id);
    sortedVocabs.set(tok, vocab);
  }
  const tokens: number[] = [];
  if (text.length > 0) tokens.push(vocab.get(' ')!);
  const bytes = Buffer.from(text, 'utf8');
  let buf: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    if ((bytes[i] & 0xc0) !== 0x80) buf = [];
    buf.push(bytes[i]);
    if (((bytes[i + 1] ?? 0) & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = vocab.get(key(Uint8Array.from(buf)));
    if (id !== undefined) tokens.push(id);
    else for (const b of buf) tokens.push(b + 3);
    buf = [];
  }
  for (;;) {
    let bestScore = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = vocab.get(key(tok.pieces[tokens[i]]) + key(tok.pieces[tokens[i + 1]]));
      if (id !== undefined && tok.scores[id] > bestScore) {
        bestScore = tok.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}

const TRICKY = [
  '',
  ' ',
  'a',
  '  two leading spaces',
  'trailing spaces   ',
  'a    b',
  `runs${' '.repeat(5)}of${' '.repeat(17)}spaces${' '.repeat(40)}end`,
  'Once upon a time, there was a little girl named Lily.',
  'héllo wörld, ça va? naïve façade — “quotes” ‘single’ …',
  '😀🎉 emojis 👨‍👩‍👧‍👦 family 🇫🇷 flag',
  '日本語のテキストと中文字符 한국어',
  'Ünïcödé ⅋ ∑ ∞ ≠ ≤ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{10FFFF}',
  'e\u0301 combining, \u200b zero width, \ufeff bom inside',
  'tabs\tand\nnewlines\r\n\n\nmixed',
  'x\u0000y nul byte',
  'numbers 1234567890 3.14159 -42 1e10',
  '"Lily!" said Mom. "Don\'t go!"',
  '<0x41> looks like a byte piece',
];

let corpusLines: string[];
let stories: string[];
let scratch: Awaited<ReturnType<typeof scratchDir>>;

beforeAll(async () => {
  const corpus = await readFile(TINYSTORIES_VAL, 'utf8');
  corpusLines = corpus.split('\n').filter((l) => l.length > 0);
  stories = corpus.split('\n\n').slice(0, 40);
  scratch = await scratchDir('ppsd-tokenizer-');
});
afterAll(() => scratch.cleanup());

for (const [label, file] of [
  ['tok512', TOK512],
  ['llama2 32000', LLAMA2_TOKENIZER],
] as const) {
  describe(`llama2.c tokenizer ${label}`, () => {
    let tok: Llama2cTokenizer;
    let hf: HfTokenizer;
    let samples: string[];
    beforeAll(async () => {
      tok = await readLlama2cTokenizer(file);
      const jsonPath = path.join(scratch.dir, `${label.replace(' ', '-')}.json`);
      await convertLlama2cTokenizerFile(file, jsonPath);
      hf = await loadHfTokenizer(jsonPath);
      samples = [...TRICKY, ...corpusLines.slice(0, 1500), ...stories];
    });

    it('encodes exactly like llama2.c run.c', () => {
      expect(tok.vocabSize).toBe(label === 'tok512' ? 512 : 32000);
      expect(tok.encode('')).toEqual([]);
      // The reference port is quadratic: a subset of the corpus keeps this quick.
      for (const s of [...TRICKY, ...corpusLines.slice(0, 60), stories[0]]) {
        expect(tok.encode(s), s).toEqual(llama2cEncodeReference(tok, s));
      }
    });

    it('the converted tokenizer.json encodes the same ids on every sample', () => {
      expect(hf.vocabSize).toBe(tok.vocabSize);
      expect([hf.bosId, hf.eosId]).toEqual([1, 2]);
      const mismatches = samples.filter(
        (s) => JSON.stringify(hf.encode(s)) !== JSON.stringify(tok.encode(s)),
      );
      expect(mismatches).toEqual([]);
    });

    it("tokenBytes: each id's own bytes, the same from tokenizer.json (byte tokens, ▁ as space, control names)", () => {
      for (let id = 0; id < tok.vocabSize; id++) {
        expect(Array.from(hf.tokenBytes(id)), `id ${id}`).toEqual(Array.from(tok.tokenBytes(id)));
      }
      expect(new TextDecoder().decode(tok.tokenBytes(2))).toBe('</s>');
      expect(Array.from(tok.tokenBytes(3 + 0x0a))).toEqual([0x0a]);
      const t = tok.encode('a story')[1]; // a piece with its leading space
      expect(new TextDecoder().decode(tok.tokenBytes(t)).startsWith(' ')).toBe(true);
    });

    it('decode(encode(text)) round-trips for both', () => {
      for (const s of samples) {
        expect(tok.decode(tok.encode(s)), s).toBe(s);
        expect(hf.decode(hf.encode(s)), s).toBe(s);
      }
    });

    it('stream decoders emit exactly decode() incrementally, never half a character', () => {
      for (const t of [tok, hf] as Tokenizer[]) {
        for (const s of [...TRICKY, ...corpusLines.slice(0, 40)]) {
          const ids = t.encode(s);
          const stream = t.createStreamDecoder();
          const deltas = ids.map((id) => stream.push(id));
          deltas.push(stream.flush());
          expect(deltas.join(''), `${t.kind}: ${s}`).toBe(t.decode(ids));
          for (const d of deltas) {
            expect(d.includes('\uFFFD'), `${t.kind} delta ${JSON.stringify(d)}`).toBe(false);
            expect(/[\uD800-\uDBFF]$/.test(d), 'split surrogate pair').toBe(false);
          }
        }
      }
    });

    it('stream decoders continue a prompt: leading space kept, dropped only right after BOS', () => {
      for (const t of [tok, hf] as Tokenizer[]) {
        const ids = t.encode('Once upon a time, there was a cat 😀 named Tom.');
        for (let k = 1; k < ids.length; k++) {
          const prefix = t.decode(ids.slice(0, k));
          const full = t.decode(ids);
          if (prefix.includes('\uFFFD')) continue; // a split inside one character's bytes
          const stream = t.createStreamDecoder(ids[k - 1]);
          const text =
            ids
              .slice(k)
              .map((id) => stream.push(id))
              .join('') + stream.flush();
          expect(prefix + text, `${t.kind} split at ${k}`).toBe(full);
        }
        // After a BOS-only context the first piece loses its leading space, as in llama2.c.
        const afterBos = t.createStreamDecoder(t.bosId);
        expect(ids.map((id) => afterBos.push(id)).join('') + afterBos.flush()).toBe(t.decode(ids));
        expect(t.decode(ids).startsWith('Once')).toBe(true);
      }
    });

    it('holds back byte-fallback pieces until the character is complete', () => {
      for (const t of [tok, hf] as Tokenizer[]) {
        const ids = t.encode('a 𝔘 b');
        const stream = t.createStreamDecoder(t.bosId);
        const deltas = ids.map((id) => stream.push(id));
        expect(deltas.join('') + stream.flush()).toBe('a 𝔘 b');
        if (label === 'tok512') expect(deltas.filter((d) => d === '').length).toBeGreaterThan(0);
      }
      // An incomplete character at the end comes out as U+FFFD on flush, not silently dropped.
      const lead = 0xf0 + 3; // <0xF0>: first byte of a 4-byte sequence
      const stream = tok.createStreamDecoder();
      expect(stream.push(lead)).toBe('');
      expect(stream.flush()).toBe('\uFFFD');
    });

    it('control tokens print nothing and a piece after BOS loses its space', () => {
      const ids = tok.encode('Hi there');
      expect(tok.decode([1, ...ids, 2])).toBe('Hi there');
      expect(hf.decode([1, ...ids, 2])).toBe('Hi there');
      expect(tok.decode([...ids, 1, ...ids])).toBe('Hi thereHi there');
      expect(() => tok.decode([tok.vocabSize])).toThrow(/outside the vocabulary/);
    });
  });
}

describe('tokenizer files', () => {
  it('loadTokenizer picks the implementation by file type', async () => {
    const jsonPath = path.join(scratch.dir, 'picked.json');
    await convertLlama2cTokenizerFile(TOK512, jsonPath);
    expect((await loadTokenizer(TOK512)).kind).toBe('llama2c');
    expect((await loadTokenizer(jsonPath)).kind).toBe('hf');
    expect(tokenizerKindOf('x/tokenizer.json')).toBe('hf');
    expect(() => tokenizerKindOf('tokenizer.model')).toThrow(/unknown tokenizer file type/);
    const overridden = await loadTokenizer(jsonPath, { bosId: 7, eosId: 9 });
    expect([overridden.bosId, overridden.eosId]).toEqual([7, 9]);
  });

  it('the tokenizer.json is Llama / SentencePiece style', async () => {
    const json = llama2cToHfJson(await readLlama2cTokenizer(TOK512));
    expect(json.model).toMatchObject({ type: 'BPE', byte_fallback: true, unk_token: '<unk>' });
    expect(json.model.vocab['<0x0A>']).toBe(13);
    expect(json.model.vocab['▁t']).toBe(259);
    expect(json.model.merges[0]).toEqual(['▁', 't']); // the best-scored piece's merge comes first
    expect(json.normalizer.normalizers.map((n) => n.type)).toEqual(['Prepend', 'Replace']);
    expect(json.decoder.decoders.map((d) => d.type)).toEqual(['Replace', 'ByteFallback', 'Fuse', 'Strip']);
    expect(json.added_tokens.map((t) => t.content)).toEqual(['<unk>', '<s>', '</s>']);
  });

  it('tokenBytes of a GPT-2 style byte-level vocabulary maps its characters back to bytes', () => {
    const json = {
      model: { type: 'BPE', vocab: { Ġhi: 0, Ã: 1, '©': 2, Ċ: 3, '<|end|>': 4 }, merges: [] },
      decoder: { type: 'ByteLevel' },
      added_tokens: [{ id: 4, content: '<|end|>', special: true }],
    };
    const t = new HfTokenizer(json, {});
    const bytes = (id: number) => Array.from(t.tokenBytes(id));
    expect(bytes(0)).toEqual([0x20, 0x68, 0x69]);
    expect([bytes(1), bytes(2), bytes(3)]).toEqual([[0xc3], [0xa9], [0x0a]]);
    expect(new TextDecoder().decode(t.tokenBytes(4))).toBe('<|end|>');
  });

  it('refuses a truncated tokenizer.bin', async () => {
    const bytes = await readFile(TOK512);
    const bad = path.join(scratch.dir, 'short.bin');
    await writeFile(bad, bytes.subarray(0, bytes.length - 2));
    await expect(readLlama2cTokenizer(bad)).rejects.toThrow(
      /short\.bin: not a llama2.c tokenizer.bin: token 511/,
    );
    await writeFile(bad, Buffer.alloc(2));
    await expect(readLlama2cTokenizer(bad)).rejects.toThrow(/too short/);
  });

  it('reads tokenizer_config.json next to tokenizer.json for BOS/EOS', async () => {
    const dir = path.join(scratch.dir, 'with-config');
    await import('node:fs/promises').then((fs) => fs.mkdir(dir, { recursive: true }));
    await convertLlama2cTokenizerFile(TOK512, path.join(dir, 'tokenizer.json'));
    await writeFile(
      path.join(dir, 'tokenizer_config.json'),
      JSON.stringify({ bos_token: '</s>', eos_token: { content: '<s>' } }),
    );
    const t = await loadHfTokenizer(path.join(dir, 'tokenizer.json'));
    expect([t.bosId, t.eosId]).toEqual([2, 1]);
  });
});
