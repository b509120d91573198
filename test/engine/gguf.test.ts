import { createHash } from 'node:crypto';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  GGML_TYPE,
  GgufFile,
  type GgufTensorSource,
  type GgufValue,
  gguf,
  readGgufHeader,
  writeGguf,
} from '../../workers/engine/src/formats/gguf';
import { type GgufVocab, readGgufLlama, writeGgufLlama } from '../../workers/engine/src/formats/gguf-llama';
import { ggmlToMatrix } from '../../workers/engine/src/formats/gguf-tensors';
import { interleavedRowOrder } from '../../workers/engine/src/formats/llama2c';
import { headDim, type LlamaModel } from '../../workers/engine/src/model/llama';
import {
  convertMatrix,
  dense,
  denseRows,
  isBlock,
  type Matrix,
  type MatrixDtype,
  permuteRows,
} from '../../workers/engine/src/model/matrix';
import { llamaConfig, Rng, randomLlama } from '../../workers/engine/src/model/random';
import { HfTokenizer } from '../../workers/engine/src/tokenizer/hf';
import { Llama2cTokenizer } from '../../workers/engine/src/tokenizer/llama2c';
import { llama2cToHfJson } from '../../workers/engine/src/tokenizer/to-hf';
import { expectSameWeights } from '../helpers/same-weights';
import { scratchDir, TOK512 } from '../helpers/shared';

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let tok512: Llama2cTokenizer;
let tok512Bytes: Buffer;

beforeAll(async () => {
  scratch = await scratchDir('ppsd-gguf-');
  tok512Bytes = await readFile(TOK512);
  tok512 = Llama2cTokenizer.parse(tok512Bytes, TOK512);
});
afterAll(() => scratch.cleanup());

const at = (name: string) => path.join(scratch.dir, name);
const SAMPLE = 'Once upon a time, Lily saw a big red ball. "Can I play?" she asked. 42 ünïcödé 😀';

// ---- independent helpers (written from the GGUF spec and ggml's C, not from the code under test) -------

/** IEEE half bits -> value. */
function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const f = h & 1023;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? Number.NaN : s * Number.POSITIVE_INFINITY;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}
/** A positive value -> the nearest half bits (test data only: normal range, no rounding subtleties). */
function toF16(v: number): number {
  let best = 0;
  for (let h = 0; h < 0x7c00; h++) if (Math.abs(f16(h) - v) < Math.abs(f16(best) - v)) best = h;
  return best;
}
const F = Math.fround;
const u16le = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8);
const put16 = (b: Uint8Array, i: number, h: number) => {
  b[i] = h & 255;
  b[i + 1] = h >> 8;
};

/** ggml's dequantize_row_q8_0 / q4_0 / q4_K / q5_K / q6_K, ported literally (f32 arithmetic). */
function ggmlDequant(type: string, b: Uint8Array, n: number): Float32Array {
  const y = new Float32Array(n);
  if (type === 'Q8_0') {
    for (let i = 0; i < n / 32; i++) {
      const d = f16(u16le(b, i * 34));
      for (let j = 0; j < 32; j++) y[i * 32 + j] = F(((b[i * 34 + 2 + j] << 24) >> 24) * d);
    }
  } else if (type === 'Q4_0') {
    for (let i = 0; i < n / 32; i++) {
      const d = f16(u16le(b, i * 18));
      for (let j = 0; j < 16; j++) {
        const q = b[i * 18 + 2 + j];
        y[i * 32 + j] = F(((q & 15) - 8) * d);
        y[i * 32 + j + 16] = F(((q >> 4) - 8) * d);
      }
    }
  } else if (type === 'Q4_K' || type === 'Q5_K') {
    const five = type === 'Q5_K';
    const size = five ? 176 : 144;
    const scaleMin = (j: number, q: Uint8Array, o: number): [number, number] =>
      j < 4
        ? [q[o + j] & 63, q[o + j + 4] & 63]
        : [(q[o + j + 4] & 0xf) | ((q[o + j - 4] >> 6) << 4), (q[o + j + 4] >> 4) | ((q[o + j] >> 6) << 4)];
    let k = 0;
    for (let i = 0; i < n / 256; i++) {
      const o = i * size;
      const d = f16(u16le(b, o));
      const min = f16(u16le(b, o + 2));
      let ql = o + (five ? 48 : 16);
      const qh = o + 16;
      let u1 = 1;
      let u2 = 2;
      for (let j = 0, is = 0; j < 256; j += 64, is += 2) {
        const [sc1, m1] = scaleMin(is, b, o + 4);
        const [sc2, m2] = scaleMin(is + 1, b, o + 4);
        const d1 = F(d * sc1);
        const mm1 = F(min * m1);
        const d2 = F(d * sc2);
        const mm2 = F(min * m2);
        for (let l = 0; l < 32; l++) {
          const q = (b[ql + l] & 15) + (five && b[qh + l] & u1 ? 16 : 0);
          y[k++] = F(F(d1 * q) - mm1);
        }
        for (let l = 0; l < 32; l++) {
          const q = (b[ql + l] >> 4) + (five && b[qh + l] & u2 ? 16 : 0);
          y[k++] = F(F(d2 * q) - mm2);
        }
        ql += 32;
        u1 <<= 2;
        u2 <<= 2;
      }
    }
  } else if (type === 'Q6_K') {
    for (let i = 0; i < n / 256; i++) {
      const o = i * 210;
      const d = f16(u16le(b, o + 208));
      for (let half = 0; half < 2; half++) {
        const ql = o + 64 * half;
        const qh = o + 128 + 32 * half;
        const sc = o + 192 + 8 * half;
        const yo = i * 256 + 128 * half;
        const s8 = (x: number) => (b[x] << 24) >> 24;
        for (let l = 0; l < 32; l++) {
          const is = l >> 4;
          const q1 = ((b[ql + l] & 15) | (((b[qh + l] >> 0) & 3) << 4)) - 32;
          const q2 = ((b[ql + l + 32] & 15) | (((b[qh + l] >> 2) & 3) << 4)) - 32;
          const q3 = ((b[ql + l] >> 4) | (((b[qh + l] >> 4) & 3) << 4)) - 32;
          const q4 = ((b[ql + l + 32] >> 4) | (((b[qh + l] >> 6) & 3) << 4)) - 32;
          y[yo + l] = F(F(d * s8(sc + is)) * q1);
          y[yo + l + 32] = F(F(d * s8(sc + is + 2)) * q2);
          y[yo + l + 64] = F(F(d * s8(sc + is + 4)) * q3);
          y[yo + l + 96] = F(F(d * s8(sc + is + 6)) * q4);
        }
      }
    }
  } else throw new Error(type);
  return y;
}

/** Raw block bytes following ggml's structs (block_q8_0, block_q4_0, block_q4_K, block_q5_K, block_q6_K). */
const build = {
  q8_0(d: number, q: number[]): Uint8Array {
    const b = new Uint8Array(34);
    put16(b, 0, d);
    q.forEach((v, i) => {
      b[2 + i] = v & 255;
    });
    return b;
  },
  q4_0(d: number, q: number[]): Uint8Array {
    const b = new Uint8Array(18);
    put16(b, 0, d);
    for (let j = 0; j < 16; j++) b[2 + j] = q[j] | (q[j + 16] << 4);
    return b;
  },
  /** sc, m: 8 six-bit values; q: 256 values of 4 (Q4_K) or 5 (Q5_K) bits. */
  qk(five: boolean, d: number, dmin: number, sc: number[], m: number[], q: number[]): Uint8Array {
    const b = new Uint8Array(five ? 176 : 144);
    put16(b, 0, d);
    put16(b, 2, dmin);
    for (let j = 0; j < 4; j++) {
      b[4 + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
      b[4 + j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
      b[4 + j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    const qs = five ? 48 : 16;
    for (let c = 0; c < 4; c++) {
      for (let l = 0; l < 32; l++) {
        const lo = q[64 * c + l];
        const hi = q[64 * c + 32 + l];
        b[qs + 32 * c + l] = (lo & 15) | ((hi & 15) << 4);
        if (five) b[16 + l] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
      }
    }
    return b;
  },
  /** q: 256 six-bit values, sc: 16 int8 scales. */
  q6_K(d: number, sc: number[], q: number[]): Uint8Array {
    const b = new Uint8Array(210);
    for (let n = 0; n < 2; n++) {
      for (let l = 0; l < 32; l++) {
        const [a, bb, c, dd] = [0, 32, 64, 96].map((k) => q[128 * n + l + k]);
        b[64 * n + l] = (a & 15) | ((c & 15) << 4);
        b[64 * n + l + 32] = (bb & 15) | ((dd & 15) << 4);
        b[128 + 32 * n + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((dd >> 4) << 6);
      }
    }
    sc.forEach((s, k) => {
      b[192 + k] = s & 255;
    });
    put16(b, 208, d);
    return b;
  },
};

const ints = (rng: Rng, n: number, lo: number, hi: number) =>
  Array.from({ length: n }, () => lo + Math.floor(rng.uniform() * (hi - lo + 1)));
const concat = (parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

async function writeRaw(file: string, tensors: GgufTensorSource[], extra: [string, GgufValue][] = []) {
  return writeGguf(file, { metadata: [['general.architecture', gguf.string('test')], ...extra], tensors });
}

async function importRaw(file: string, name: string): Promise<Matrix> {
  const f = await GgufFile.open(file);
  try {
    const t = f.tensor(name);
    return ggmlToMatrix(`${file}: tensor '${name}'`, t.type, t.dims, await f.readTensor(t));
  } finally {
    await f.close();
  }
}

/** Rewrites a GGUF with edited metadata and tensor infos (tensor bytes copied as they are). */
async function rewrite(
  src: string,
  dst: string,
  edit: (meta: Map<string, GgufValue>, tensors: GgufTensorSource[]) => void,
): Promise<void> {
  const f = await GgufFile.open(src);
  const tensors: GgufTensorSource[] = [];
  for (const t of f.header.tensors)
    tensors.push({ name: t.name, type: t.type, dims: t.dims, data: await f.readTensor(t) });
  await f.close();
  const meta = new Map(f.header.metadata);
  edit(meta, tensors);
  await writeGguf(dst, { metadata: meta, tensors });
}

// ---- container -----------------------------------------------------------------------------------------

describe('GGUF container', () => {
  const metadata: [string, GgufValue][] = [
    ['general.architecture', gguf.string('test')],
    ['general.alignment', gguf.u32(64)],
    ['t.u8', gguf.u8(255)],
    ['t.i8', gguf.i8(-128)],
    ['t.u16', gguf.u16(65535)],
    ['t.i16', gguf.i16(-32768)],
    ['t.u32', gguf.u32(4294967295)],
    ['t.i32', gguf.i32(-2147483648)],
    ['t.f32', gguf.f32(Math.fround(1e-5))],
    ['t.f64', gguf.f64(Math.PI)],
    ['t.u64', gguf.u64(18446744073709551615n)],
    ['t.i64', gguf.i64(-9223372036854775808n)],
    ['t.bool.true', gguf.bool(true)],
    ['t.bool.false', gguf.bool(false)],
    ['t.string', gguf.string('héllo ▁wörld 😀')],
    ['t.string.empty', gguf.string('')],
    ['t.arr.u8', gguf.array('u8', Uint8Array.of(0, 1, 255))],
    ['t.arr.i8', gguf.array('i8', Int8Array.of(-128, 0, 127))],
    ['t.arr.u16', gguf.array('u16', Uint16Array.of(0, 65535))],
    ['t.arr.i16', gguf.array('i16', Int16Array.of(-32768, 32767))],
    ['t.arr.u32', gguf.array('u32', Uint32Array.of(0, 4294967295))],
    ['t.arr.i32', gguf.array('i32', Int32Array.of(-2147483648, 7))],
    ['t.arr.f32', gguf.array('f32', Float32Array.of(-0, 1.5, Number.POSITIVE_INFINITY))],
    ['t.arr.f64', gguf.array('f64', Float64Array.of(Math.E, -1e300))],
    ['t.arr.u64', gguf.array('u64', BigUint64Array.of(0n, 18446744073709551615n))],
    ['t.arr.i64', gguf.array('i64', BigInt64Array.of(-1n, 9223372036854775807n))],
    ['t.arr.bool', gguf.array('bool', [true, false, true])],
    ['t.arr.string', gguf.strings(['a', '', '▁b', '<0x0A>', 'ü'])],
    ['t.arr.empty', gguf.array('f32', new Float32Array(0))],
    [
      't.arr.nested',
      gguf.array('array', [gguf.array('i32', Int32Array.of(1, 2)), gguf.strings(['x']), gguf.strings([])]),
    ],
  ];
  const tensorBytes = (n: number, seed: number) =>
    Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 255);

  it('round-trips every metadata value type, tensor infos and aligned tensor data', async () => {
    const file = at('container.gguf');
    const tensors: GgufTensorSource[] = [
      { name: 'a', type: GGML_TYPE.F32, dims: [3], data: tensorBytes(12, 1) },
      { name: 'b', type: GGML_TYPE.F16, dims: [5, 2, 1], data: () => tensorBytes(20, 2) },
      { name: 'c', type: GGML_TYPE.Q8_0, dims: [64, 3], data: async () => tensorBytes(6 * 34, 3) },
      { name: 'd', type: GGML_TYPE.Q6_K, dims: [256, 2], data: tensorBytes(2 * 210, 4) },
    ];
    const progress: number[] = [];
    const written = await writeGguf(
      file,
      { metadata, tensors },
      { onProgress: (done, total) => progress.push(done / total) },
    );
    const raw = await readFile(file);
    expect(written.bytes).toBe(raw.length);
    expect(written.sha256).toBe(createHash('sha256').update(raw).digest('hex'));
    expect(progress.at(-1)).toBe(1);

    const h = await readGgufHeader(file);
    expect(h.version).toBe(3);
    expect(h.alignment).toBe(64);
    expect(h.dataOffset % 64).toBe(0);
    expect([...h.metadata.entries()]).toEqual(metadata);
    expect(h.tensors.map((t) => [t.name, t.typeName, t.dims, t.offset % 64])).toEqual([
      ['a', 'F32', [3], 0],
      ['b', 'F16', [5, 2, 1], 0],
      ['c', 'Q8_0', [64, 3], 0],
      ['d', 'Q6_K', [256, 2], 0],
    ]);
    const f = await GgufFile.open(file);
    expect(await f.readTensor('a')).toEqual(tensorBytes(12, 1));
    expect(await f.readTensor('b')).toEqual(tensorBytes(20, 2));
    expect(await f.readTensor('c')).toEqual(tensorBytes(6 * 34, 3));
    expect(await f.readTensor('d')).toEqual(tensorBytes(2 * 210, 4));
    await f.close();
  });

  it('reads version 2 files and uses the default alignment of 32', async () => {
    const file = at('v2.gguf');
    await writeGguf(
      file,
      {
        metadata: [['general.architecture', gguf.string('test')]],
        tensors: [{ name: 'x', type: GGML_TYPE.F32, dims: [5], data: new Uint8Array(20) }],
      },
      { version: 2 },
    );
    const h = await readGgufHeader(file);
    expect(h.version).toBe(2);
    expect(h.alignment).toBe(32);
    expect(h.dataOffset % 32).toBe(0);
  });

  it('refuses a bad magic, an unsupported version, truncation and tensors out of bounds', async () => {
    const file = at('good.gguf');
    await writeRaw(file, [{ name: 'big', type: GGML_TYPE.F32, dims: [64, 4], data: new Uint8Array(1024) }]);
    const good = await readFile(file);

    const magic = Buffer.from(good);
    magic.write('GGML', 0, 'latin1');
    await writeFile(at('magic.gguf'), magic);
    await expect(readGgufHeader(at('magic.gguf'))).rejects.toThrow(
      /magic\.gguf: not a GGUF file \(magic "GGML"/,
    );

    for (const v of [1, 4]) {
      const bad = Buffer.from(good);
      bad.writeUInt32LE(v, 4);
      await writeFile(at(`v${v}.gguf`), bad);
      await expect(readGgufHeader(at(`v${v}.gguf`))).rejects.toThrow(
        new RegExp(`GGUF version ${v} is not supported \\(only versions 2 and 3`),
      );
    }

    await writeFile(at('short-header.gguf'), good.subarray(0, 40));
    await expect(readGgufHeader(at('short-header.gguf'))).rejects.toThrow(
      /short-header\.gguf: unexpected end of file at byte 40 while reading .* \(truncated\?\)/,
    );

    await writeFile(at('short-data.gguf'), good);
    await truncate(at('short-data.gguf'), good.length - 100);
    await expect(readGgufHeader(at('short-data.gguf'))).rejects.toThrow(
      /short-data\.gguf: tensor 'big' \(F32 \[64,4\], data bytes 0\.\.1024\) runs past the end of the file \(\d+ data bytes; truncated\?\)/,
    );

    await writeFile(at('empty.gguf'), Buffer.alloc(0));
    await expect(readGgufHeader(at('empty.gguf'))).rejects.toThrow(/0 bytes is too small for a GGUF file/);
  });

  it('refuses unknown ggml type ids in the header, naming the tensor', async () => {
    await writeRaw(at('unknown-id.gguf'), [
      { name: 'w', type: GGML_TYPE.F32, dims: [8], data: new Uint8Array(32) },
    ]);
    const bad = await readFile(at('unknown-id.gguf'));
    // The tensor type is the int32 right before the final uint64 offset of the only tensor info.
    const infoEnd = bad.indexOf(Buffer.from('w', 'latin1'), 24) + 1 + 4 + 8;
    bad.writeInt32LE(99, infoEnd);
    await writeFile(at('unknown-id.gguf'), bad);
    await expect(readGgufHeader(at('unknown-id.gguf'))).rejects.toThrow(
      /tensor 'w' has unknown ggml type 99/,
    );
  });
});

// ---- tensor types --------------------------------------------------------------------------------------

describe('GGML tensor types -> matrices', () => {
  const rng = new Rng(7);

  it('Q8_0 and Q4_0 import bit for bit, with MatMulNBits codes', async () => {
    const rows = 3;
    const q8 = Array.from({ length: rows * 2 }, () => ({
      d: toF16(0.01 + rng.uniform()),
      q: ints(rng, 32, -128, 127),
    }));
    const q4 = Array.from({ length: rows * 2 }, () => ({
      d: toF16(0.01 + rng.uniform()),
      q: ints(rng, 32, 0, 15),
    }));
    q8[0].q[0] = -128;
    q8[0].q[1] = 127;
    const q8Bytes = concat(q8.map((b) => build.q8_0(b.d, b.q)));
    const q4Bytes = concat(q4.map((b) => build.q4_0(b.d, b.q)));
    const file = at('q8-q4.gguf');
    await writeRaw(file, [
      { name: 'q8', type: GGML_TYPE.Q8_0, dims: [64, rows], data: q8Bytes },
      { name: 'q4', type: GGML_TYPE.Q4_0, dims: [64, rows], data: q4Bytes },
    ]);
    const m8 = await importRaw(file, 'q8');
    const m4 = await importRaw(file, 'q4');
    expect([m8.dtype, m8.rows, m8.cols]).toEqual(['q8', rows, 64]);
    expect([m4.dtype, m4.rows, m4.cols]).toEqual(['q4', rows, 64]);
    expect(denseRows(m8)).toEqual(ggmlDequant('Q8_0', q8Bytes, rows * 64));
    expect(denseRows(m4)).toEqual(ggmlDequant('Q4_0', q4Bytes, rows * 64));
    if (!isBlock(m8) || !isBlock(m4)) throw new Error('not blockwise');
    expect(m8.zeroPoints).toBeUndefined();
    expect(Array.from(m8.codes.subarray(0, 32))).toEqual(q8[0].q.map((v) => v + 128));
    expect(m8.scales[0]).toBe(f16(q8[0].d));
    // element 2i in the low nibble of byte i, 2i + 1 in the high one
    expect(Array.from(m4.codes.subarray(0, 16))).toEqual(
      Array.from({ length: 16 }, (_, i) => q4[0].q[2 * i] | (q4[0].q[2 * i + 1] << 4)),
    );
  });

  it('Q6_K imports bit for bit as q8 with 16-value blocks (code = q + 96)', async () => {
    const blocks = Array.from({ length: 4 }, () => ({
      d: toF16(0.001 + rng.uniform() * 0.01),
      sc: ints(rng, 16, -128, 127),
      q: ints(rng, 256, 0, 63),
    }));
    const bytes = concat(blocks.map((b) => build.q6_K(b.d, b.sc, b.q)));
    await writeRaw(at('q6k.gguf'), [{ name: 'w', type: GGML_TYPE.Q6_K, dims: [512, 2], data: bytes }]);
    const m = await importRaw(at('q6k.gguf'), 'w');
    if (!isBlock(m)) throw new Error('not blockwise');
    expect([m.dtype, m.blockSize, m.zeroPoints]).toEqual(['q8', 16, undefined]);
    expect(Array.from(m.codes.subarray(0, 256))).toEqual(blocks[0].q.map((v) => v + 96));
    expect(denseRows(m)).toEqual(ggmlDequant('Q6_K', bytes, 1024));
  });

  for (const five of [false, true]) {
    const type = five ? 'Q5_K' : 'Q4_K';
    const qMax = five ? 31 : 15;

    it(`${type} imports exactly when d*sc and dmin*m give exact zero points`, async () => {
      // d, dmin powers of two and every minimum a multiple of its scale: zp = dmin*m / (d*sc) is exact
      const sc = [1, 2, 4, 8, 16, 32, 63, 3];
      const m = sc.map((s, i) => (i === 7 ? 0 : Math.min(63, s * (i % 3))));
      const q = ints(rng, 256, 0, qMax);
      const bytes = build.qk(five, toF16(2 ** -10), toF16(2 ** -10), sc, m, q);
      await writeRaw(at(`${type}-exact.gguf`), [
        { name: 'w', type: five ? GGML_TYPE.Q5_K : GGML_TYPE.Q4_K, dims: [256, 1], data: bytes },
      ]);
      const mat = await importRaw(at(`${type}-exact.gguf`), 'w');
      if (!isBlock(mat)) throw new Error('not blockwise');
      expect([mat.dtype, mat.blockSize, mat.zeroPoints?.length]).toEqual([five ? 'q8' : 'q4', 32, 8]);
      expect(denseRows(mat)).toEqual(ggmlDequant(type, bytes, 256));
    });

    it(`${type} random super-blocks import to ggml's values within 2 ulps of the block maximum`, async () => {
      const blocks = Array.from({ length: 4 }, () =>
        build.qk(
          five,
          toF16(0.0005 + rng.uniform() * 0.002),
          toF16(0.0005 + rng.uniform() * 0.002),
          ints(rng, 8, 1, 63),
          ints(rng, 8, 0, 63),
          ints(rng, 256, 0, qMax),
        ),
      );
      const bytes = concat(blocks);
      await writeRaw(at(`${type}.gguf`), [
        { name: 'w', type: five ? GGML_TYPE.Q5_K : GGML_TYPE.Q4_K, dims: [512, 2], data: bytes },
      ]);
      const ours = denseRows(await importRaw(at(`${type}.gguf`), 'w'));
      const ref = ggmlDequant(type, bytes, 1024);
      for (let b = 0; b < 1024; b += 32) {
        let amax = 0;
        for (let i = b; i < b + 32; i++) amax = Math.max(amax, Math.abs(ref[i]));
        for (let i = b; i < b + 32; i++)
          expect(Math.abs(ours[i] - ref[i])).toBeLessThanOrEqual(amax * 2 ** -23);
      }
    });
  }

  it('refuses a k-quant sub-block with zero scale but a minimum, naming tensor, type and block', async () => {
    const sc = [5, 5, 5, 0, 5, 5, 5, 5];
    const m = [1, 1, 1, 7, 1, 1, 1, 1];
    const bytes = concat([
      build.qk(false, toF16(0.01), toF16(0.01), [5, 5, 5, 5, 5, 5, 5, 5], m, ints(rng, 256, 0, 15)),
      build.qk(false, toF16(0.01), toF16(0.01), sc, m, ints(rng, 256, 0, 15)),
    ]);
    await writeRaw(at('q4k-zero.gguf'), [
      { name: 'blk.0.ffn_up.weight', type: GGML_TYPE.Q4_K, dims: [256, 2], data: bytes },
    ]);
    await expect(importRaw(at('q4k-zero.gguf'), 'blk.0.ffn_up.weight')).rejects.toThrow(
      /tensor 'blk\.0\.ffn_up\.weight': Q4_K super-block 0 of row 1, sub-block 3: scale d\*sc is 0 but the minimum is 0\.07/,
    );
  });

  it('refuses other types, naming the tensor and the type', async () => {
    await writeRaw(at('q2k.gguf'), [
      { name: 'blk.3.attn_v.weight', type: 10, dims: [256, 1], data: new Uint8Array(84) },
    ]);
    await expect(importRaw(at('q2k.gguf'), 'blk.3.attn_v.weight')).rejects.toThrow(
      /tensor 'blk\.3\.attn_v\.weight' has ggml type Q2_K, which the engine cannot import \(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K\)/,
    );
  });

  it('keeps F32, F16 and BF16 as they are', async () => {
    const f32 = Float32Array.of(1, -2.5, 3e-8, 0);
    const half = Uint16Array.of(0x3c00, 0xc000, 0x0001, 0x7bff);
    await writeRaw(at('floats.gguf'), [
      { name: 'f32', type: GGML_TYPE.F32, dims: [2, 2], data: new Uint8Array(f32.buffer) },
      { name: 'f16', type: GGML_TYPE.F16, dims: [2, 2], data: new Uint8Array(half.buffer) },
      { name: 'bf16', type: GGML_TYPE.BF16, dims: [2, 2], data: new Uint8Array(half.buffer) },
    ]);
    const a = await importRaw(at('floats.gguf'), 'f32');
    const b = await importRaw(at('floats.gguf'), 'f16');
    const c = await importRaw(at('floats.gguf'), 'bf16');
    expect(a).toEqual({ dtype: 'f32', rows: 2, cols: 2, data: f32 });
    expect(b).toEqual({ dtype: 'f16', rows: 2, cols: 2, data: half });
    expect(c).toEqual({ dtype: 'bf16', rows: 2, cols: 2, data: half });
  });
});

// ---- llama models --------------------------------------------------------------------------------------

/** The model with every matrix converted the way the GGUF writer must store it for `dtype`. */
function converted(model: LlamaModel, dtype: MatrixDtype): LlamaModel {
  const conv = (m: Matrix) => convertMatrix(m, dtype);
  const w = model.weights;
  const tokenEmbedding = conv(w.tokenEmbedding);
  return {
    config: model.config,
    weights: {
      tokenEmbedding,
      layers: w.layers.map((l) => ({
        ...l,
        wq: conv(l.wq),
        wk: conv(l.wk),
        wv: conv(l.wv),
        wo: conv(l.wo),
        w1: conv(l.w1),
        w2: conv(l.w2),
        w3: conv(l.w3),
      })),
      finalNorm: w.finalNorm,
      classifier: w.classifier === w.tokenEmbedding ? tokenEmbedding : conv(w.classifier),
    },
  };
}

const smallModel = (hiddenDim: number, tiedEmbeddings: boolean, seed: number) =>
  randomLlama(
    llamaConfig({
      dim: 64,
      hiddenDim,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 2,
      vocabSize: 512,
      maxSeqLen: 128,
      normEps: 1e-5,
      ropeTheta: 500000,
      tiedEmbeddings,
    }),
    seed,
  );

describe('llama GGUF round trip', () => {
  const cases = [
    { hidden: 96, tied: true },
    { hidden: 172, tied: false },
  ];
  const types = [
    { type: 'f32', dtype: 'f32', ggml: 'F32' },
    { type: 'f16', dtype: 'f16', ggml: 'F16' },
    { type: 'q8_0', dtype: 'q8', ggml: 'Q8_0' },
    { type: 'q4_0', dtype: 'q4', ggml: 'Q4_0' },
    { type: 'bf16', dtype: 'bf16', ggml: 'BF16' },
  ] as const;

  for (const { hidden, tied } of cases) {
    for (const { type, dtype, ggml } of types) {
      it(`${type}, hidden ${hidden}, ${tied ? 'tied' : 'untied'}: weights, config and tokenizer come back`, async () => {
        const model = smallModel(hidden, tied, hidden + type.length);
        const file = at(`llama-${hidden}-${type}.gguf`);
        const progress: number[] = [];
        const written = await writeGgufLlama(file, model, TOK512, {
          type,
          name: 'tiny',
          onProgress: (d, t) => progress.push(d / t),
        });
        expect(progress.at(-1)).toBe(1);
        const raw = await readFile(file);
        expect(written.bytes).toBe(raw.length);
        expect(written.sha256).toBe(createHash('sha256').update(raw).digest('hex'));
        // columns that are not a multiple of 32 (ffn_down with hidden 172) stay F32 in quantized files
        const downType = hidden % 32 !== 0 && dtype.startsWith('q') ? 'F32' : ggml;
        expect(written.tensorTypes['blk.1.ffn_down.weight']).toBe(downType);
        expect(written.tensorTypes['blk.0.ffn_gate.weight']).toBe(ggml);
        expect(written.tensorTypes['blk.0.attn_norm.weight']).toBe('F32');
        expect('output.weight' in written.tensorTypes).toBe(!tied);

        const back = await readGgufLlama(file);
        expect(back.model.config).toEqual(model.config);
        // f32/f16: the values exactly; q8_0/q4_0: exactly llama.cpp's reference quantization (quantizeBlocks)
        expectSameWeights(back.model, converted(model, dtype));
        expect(back.model.weights.classifier === back.model.weights.tokenEmbedding).toBe(tied);
        expect(back.tensorDtypes['model.layers.1.mlp.down_proj.weight']).toBe(
          downType === 'F32' ? 'f32' : dtype,
        );
        expect(back.tensorDtypes['model.embed_tokens.weight']).toBe(dtype);
        expect(back.metadata).toMatchObject({
          name: 'tiny',
          architecture: 'llama',
          version: 3,
          alignment: 32,
          fileType: { f32: 0, f16: 1, q8_0: 7, q4_0: 2, bf16: 32 }[type],
          quantizationVersion: 2,
          tokenizerModel: 'llama',
        });

        // the file holds Q and K in llama.cpp's interleaved order
        const f = await GgufFile.open(file);
        const q = f.tensor('blk.1.attn_q.weight');
        const k = f.tensor('blk.1.attn_k.weight');
        const rawQ = ggmlToMatrix('q', q.type, q.dims, await f.readTensor(q));
        const rawK = ggmlToMatrix('k', k.type, k.dims, await f.readTensor(k));
        await f.close();
        const c = model.config;
        const want = converted(model, dtype).weights.layers[1];
        expect(dense(rawQ)).toEqual(dense(permuteRows(want.wq, interleavedRowOrder(c.nHeads, headDim(c)))));
        expect(dense(rawK)).toEqual(dense(permuteRows(want.wk, interleavedRowOrder(c.nKvHeads, headDim(c)))));

        // the tokenizer comes back as the very same tokenizer.bin
        expect(back.tokenizer.kind).toBe('llama2c');
        if (back.tokenizer.kind !== 'llama2c') return;
        expect(back.tokenizer.bytes.equals(tok512Bytes)).toBe(true);
        expect(Llama2cTokenizer.parse(back.tokenizer.bytes).encode(SAMPLE)).toEqual(tok512.encode(SAMPLE));
      });
    }
  }

  it('writes already quantized q8/q4 matrices as they are', async () => {
    const model = converted(smallModel(96, true, 5), 'q4');
    await writeGgufLlama(at('preq4.gguf'), model, tok512, { type: 'q4_0' });
    expectSameWeights((await readGgufLlama(at('preq4.gguf'))).model, model);
  });

  it('refuses to write a matrix that the file type cannot hold exactly', async () => {
    const model = converted(smallModel(96, true, 6), 'q4');
    await expect(writeGgufLlama(at('q4-as-q8.gguf'), model, tok512, { type: 'q8_0' })).rejects.toThrow(
      /tensor 'token_embd\.weight' \(q4, blocks of 32\) cannot be written as Q8_0 exactly: it is q4; Q8_0 holds q8/,
    );
  });

  it('converts the SentencePiece vocabulary to the same tokenizer.json as tokenizer/to-hf.ts', async () => {
    const model = smallModel(96, true, 7);
    await writeGgufLlama(at('hf-tok.gguf'), model, tok512, { type: 'f32' });
    const back = await readGgufLlama(at('hf-tok.gguf'), { tokenizerFormat: 'hf' });
    expect(back.tokenizer.kind).toBe('hf');
    if (back.tokenizer.kind !== 'hf') return;
    const json = JSON.parse(back.tokenizer.json);
    expect(json).toEqual(llama2cToHfJson(tok512));
    const hf = new HfTokenizer(json, {}, { bosId: 1, eosId: 2 });
    expect(hf.encode(SAMPLE)).toEqual(tok512.encode(SAMPLE));
  });

  it('uses tokenizer.json when BOS/EOS or the byte pieces are not where llama2.c expects them', async () => {
    const model = smallModel(96, true, 8);
    await writeGgufLlama(at('spm.gguf'), model, tok512, { type: 'f32' });
    await rewrite(at('spm.gguf'), at('spm-eos.gguf'), (meta) => {
      meta.set('tokenizer.ggml.eos_token_id', gguf.u32(259));
    });
    const back = await readGgufLlama(at('spm-eos.gguf'));
    expect(back.model.config.eosId).toBe(259);
    expect(back.tokenizer.kind).toBe('hf');
    if (back.tokenizer.kind !== 'hf') return;
    const hf = new HfTokenizer(JSON.parse(back.tokenizer.json), {}, { bosId: 1, eosId: 259 });
    expect(hf.encode(SAMPLE)).toEqual(tok512.encode(SAMPLE));
    expect(hf.decode(tok512.encode(SAMPLE))).toBe(SAMPLE);
  });

  describe('refusals', () => {
    let base: string;
    beforeAll(async () => {
      base = at('refusal-base.gguf');
      await writeGgufLlama(base, smallModel(96, false, 9), tok512, { type: 'q4_0' });
    });
    const variant = async (name: string, edit: Parameters<typeof rewrite>[2]) => {
      const file = at(name);
      await rewrite(base, file, edit);
      return file;
    };

    it('refuses another architecture, naming it', async () => {
      const file = await variant('gemma.gguf', (meta) =>
        meta.set('general.architecture', gguf.string('gemma')),
      );
      await expect(readGgufLlama(file)).rejects.toThrow(
        /gemma\.gguf: general\.architecture 'gemma' is not supported \(runs llama, qwen2\)/,
      );
    });

    it('refuses tensor types it cannot import, naming tensor and type', async () => {
      // IQ4_NL blocks have Q4_0's size, so only the type id changes
      const file = await variant('iq4.gguf', (_, tensors) => {
        tensors.find((t) => t.name === 'blk.1.attn_v.weight')!.type = 20;
      });
      await expect(readGgufLlama(file)).rejects.toThrow(
        /iq4\.gguf: tensor 'blk\.1\.attn_v\.weight' has ggml type IQ4_NL, which the engine cannot import/,
      );
    });

    it('refuses yarn rope scaling and a rope dimension other than the head size', async () => {
      const yarn = await variant('yarn.gguf', (meta) =>
        meta.set('llama.rope.scaling.type', gguf.string('yarn')),
      );
      await expect(readGgufLlama(yarn)).rejects.toThrow(/llama\.rope\.scaling\.type 'yarn'/);
      const rope = await variant('rope.gguf', (meta) => meta.set('llama.rope.dimension_count', gguf.u32(8)));
      await expect(readGgufLlama(rope)).rejects.toThrow(
        /'llama\.rope\.dimension_count' = 8 differs from the head size 16/,
      );
    });

    it('checks every tensor shape against the config, naming the tensor', async () => {
      const file = await variant('kv.gguf', (meta) => meta.set('llama.attention.head_count_kv', gguf.u32(4)));
      await expect(readGgufLlama(file)).rejects.toThrow(
        /kv\.gguf: tensor 'blk\.0\.attn_k\.weight' has dims \[64,32\], expected \[64,64\] for this config/,
      );
      const extra = await variant('extra.gguf', (_, tensors) => {
        tensors.push({
          name: 'blk.0.attn_q.bias',
          type: GGML_TYPE.F32,
          dims: [64],
          data: new Uint8Array(256),
        });
      });
      await expect(readGgufLlama(extra)).rejects.toThrow(
        /has tensors a plain Llama model does not have: 'blk\.0\.attn_q\.bias'/,
      );
      const missing = await variant('missing.gguf', (_, tensors) => {
        tensors.splice(
          tensors.findIndex((t) => t.name === 'blk.1.ffn_up.weight'),
          1,
        );
      });
      await expect(readGgufLlama(missing)).rejects.toThrow(/missing tensor 'blk\.1\.ffn_up\.weight'/);
    });

    it('refuses a truncated model file', async () => {
      const bytes = await readFile(base);
      await writeFile(at('cut.gguf'), bytes.subarray(0, bytes.length - 5000));
      await expect(readGgufLlama(at('cut.gguf'))).rejects.toThrow(
        /cut\.gguf: tensor '.*' .* runs past the end of the file .*truncated\?/,
      );
    });
  });
});

// ---- byte-level BPE ------------------------------------------------------------------------------------

/** GPT-2's bytes_to_unicode: every byte as a printable character. */
function byteChars(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out: string[] = new Array(256);
  bs.forEach((b, i) => {
    out[b] = String.fromCodePoint(cs[i]);
  });
  return out;
}

describe('gpt2 (byte-level BPE) tokenizers', () => {
  const bytes = byteChars();
  const sp = bytes[0x20]; // "Ġ"
  const merges = [
    'h e',
    'l l',
    'he ll',
    'hell o',
    `${sp} w`,
    'o r',
    `${sp}w or`,
    `${sp}wor l`,
    `${sp}worl d`,
  ];
  const tokens = [...bytes, ...merges.map((m) => m.replace(' ', '')), '<|endoftext|>', '<|user|>'];
  const types = tokens.map((_, i) => (i === tokens.length - 2 ? 3 : i === tokens.length - 1 ? 4 : 1));
  const eot = tokens.length - 2;
  const vocab = (pre?: string): GgufVocab => ({
    model: 'gpt2',
    tokens,
    tokenTypes: types,
    merges,
    pre,
    bosId: eot,
    eosId: eot,
    addBos: false,
  });
  const model = () =>
    randomLlama(
      llamaConfig({
        dim: 32,
        hiddenDim: 64,
        nLayers: 1,
        nHeads: 2,
        vocabSize: tokens.length,
        bosId: eot,
        eosId: eot,
      }),
      3,
    );

  for (const pre of [undefined, 'llama-bpe', 'qwen2']) {
    it(`round-trips 'hello world' (pre-tokenizer ${pre ?? 'absent = gpt-2'})`, async () => {
      const file = at(`bpe-${pre ?? 'default'}.gguf`);
      await writeGgufLlama(file, model(), vocab(pre), { type: 'f32' });
      const back = await readGgufLlama(file);
      expect(back.model.config.bosId).toBe(eot);
      expect(back.metadata.tokenizerModel).toBe('gpt2');
      expect(back.tokenizer.kind).toBe('hf');
      if (back.tokenizer.kind !== 'hf') return;
      const tok = new HfTokenizer(JSON.parse(back.tokenizer.json), {}, { bosId: eot, eosId: eot });
      const ids = tok.encode('hello world');
      expect(ids).toEqual([tokens.indexOf('hello'), tokens.indexOf(`${sp}world`)]);
      expect(tok.decode(ids)).toBe('hello world');
      // control tokens are split out and skipped in decoding; user-defined ones are kept
      expect(tok.encode('hello<|endoftext|> world<|user|>')).toEqual([
        ...ids.slice(0, 1),
        eot,
        ids[1],
        eot + 1,
      ]);
      expect(tok.decode([...ids, eot, eot + 1])).toBe('hello world<|user|>');
      // unknown bytes fall back to byte tokens
      expect(tok.decode(tok.encode('héllo wörld!'))).toBe('héllo wörld!');
    });
  }

  it('refuses an unknown pre-tokenizer', async () => {
    await writeGgufLlama(at('bpe-odd.gguf'), model(), vocab('odd-one'), { type: 'f32' });
    await expect(readGgufLlama(at('bpe-odd.gguf'))).rejects.toThrow(
      /pre-tokenizer tokenizer\.ggml\.pre = 'odd-one' is not supported \(supported: default, gpt-2, gpt2, llama-bpe/,
    );
  });
});
