/**
 * GGML tensor bytes <-> the engine's matrices (model/matrix.ts). A 2-D GGUF tensor with dims
 * [ne0, ne1] is a row-major matrix of ne1 rows by ne0 columns; quantized blocks run along rows.
 *
 * Import (no re-quantization anywhere):
 * - F32, F16, BF16 stay what they are.
 * - Q8_0 (f16 d, int8 q[32]; x = q * d)          -> q8, code = q + 128, scale = d.
 * - Q4_0 (f16 d, nibbles; element j is the low nibble of byte j and j + 16 the high one; x = (n - 8) * d)
 *   -> q4 with the nibbles repacked to MatMulNBits' order (element 2i low, 2i + 1 high of byte i).
 * - Q4_K (256-value super-blocks of 8 sub-blocks of 32: f16 d, dmin, 6-bit sc/m, 4-bit q;
 *   x = d*sc * q - dmin*m)                       -> q4, block 32, scale d*sc, zero point dmin*m / (d*sc).
 * - Q5_K (the same with a fifth bit)             -> q8 (codes 0..31), block 32, zero points likewise.
 * - Q6_K (16 sub-blocks of 16: int8 sc, 6-bit q; x = d*sc * (q - 32)) -> q8, block 16, code = q + 96,
 *   scale d*sc (the default zero point 128 gives q - 32).
 * Q8_0, Q4_0 and Q6_K import bit for bit (x = (code - zp) * scale rounds exactly as ggml's
 * dequantizers do). Q4_K and Q5_K are exact up to the f32 rounding of the zero point (ggml computes
 * d*sc*q - dmin*m, we compute (q - zp) * d*sc): within a few ulps of the block's largest magnitude.
 * A k-quant sub-block with d*sc == 0 but a non-zero minimum is constant and not expressible; it is refused.
 *
 * Export: F32, F16, BF16 from any matrix; Q8_0 / Q4_0 exactly from q8 / q4 matrices with 32-value blocks,
 * the default zero point and f16-representable scales, and from float matrices through quantizeBlocks
 * (llama.cpp's reference quantizers, bit for bit).
 */
import {
  type BlockDtype,
  type BlockMatrix,
  dense,
  type F32Matrix,
  floatToHalf,
  type HalfMatrix,
  halfToFloat,
  halfValues,
  isBlock,
  type Matrix,
  quantizeBlocks,
  toHalf,
} from '../model/matrix';
import { GGML_TYPE, GgufError, ggmlTensorBytes, ggmlTypeName } from './gguf';

/** The ggml types a matrix can be imported from. */
export const IMPORTABLE_TYPES = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K'] as const;
/** The ggml types a matrix can be written as. */
export type GgmlWriteType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0';
export const WRITE_TYPE_IDS: Record<GgmlWriteType, number> = {
  F32: GGML_TYPE.F32,
  F16: GGML_TYPE.F16,
  BF16: GGML_TYPE.BF16,
  Q8_0: GGML_TYPE.Q8_0,
  Q4_0: GGML_TYPE.Q4_0,
};

const u16 = (b: Uint8Array, at: number): number => b[at] | (b[at + 1] << 8);

/** Rows and columns of a 2-D tensor (trailing dims of 1 allowed). */
function matrixShape(what: string, dims: readonly number[]): { rows: number; cols: number } {
  if (dims.length < 1 || dims.length > 4 || dims.slice(2).some((d) => d !== 1))
    throw new GgufError(`${what}: dims [${dims}] are not a matrix`);
  return { cols: dims[0], rows: dims[1] ?? 1 };
}

/**
 * The matrix a 2-D tensor holds. `what` names the tensor in errors (e.g. "model.gguf: tensor 'x'").
 * F32/F16/BF16 data is viewed without a copy when `bytes` owns its whole, aligned buffer.
 */
export function ggmlToMatrix(what: string, type: number, dims: readonly number[], bytes: Uint8Array): Matrix {
  const { rows, cols } = matrixShape(what, dims);
  const expected = ggmlTensorBytes(type, dims, what);
  if (bytes.length !== expected)
    throw new GgufError(
      `${what}: ${bytes.length} bytes for ${ggmlTypeName(type)} [${dims}], expected ${expected}`,
    );
  switch (type) {
    case GGML_TYPE.F32:
      return { dtype: 'f32', rows, cols, data: view(bytes, Float32Array) } satisfies F32Matrix;
    case GGML_TYPE.F16:
    case GGML_TYPE.BF16:
      return {
        dtype: type === GGML_TYPE.F16 ? 'f16' : 'bf16',
        rows,
        cols,
        data: view(bytes, Uint16Array),
      } satisfies HalfMatrix;
    case GGML_TYPE.Q8_0:
      return fromQ8_0(bytes, rows, cols);
    case GGML_TYPE.Q4_0:
      return fromQ4_0(bytes, rows, cols);
    case GGML_TYPE.Q4_K:
      return fromQ45K(what, bytes, rows, cols, 4);
    case GGML_TYPE.Q5_K:
      return fromQ45K(what, bytes, rows, cols, 5);
    case GGML_TYPE.Q6_K:
      return fromQ6K(bytes, rows, cols);
    default:
      throw new GgufError(
        `${what} has ggml type ${ggmlTypeName(type)}, which the engine cannot import ` +
          `(supported: ${IMPORTABLE_TYPES.join(', ')})`,
      );
  }
}

/** A 1-D tensor (a norm weight) as f32; F32, F16 and BF16 are accepted. */
export function ggmlToVector(
  what: string,
  type: number,
  dims: readonly number[],
  bytes: Uint8Array,
): Float32Array {
  if (dims.length < 1 || dims.slice(1).some((d) => d !== 1))
    throw new GgufError(`${what}: dims [${dims}] are not a vector`);
  if (type !== GGML_TYPE.F32 && type !== GGML_TYPE.F16 && type !== GGML_TYPE.BF16)
    throw new GgufError(
      `${what} has ggml type ${ggmlTypeName(type)}; a norm weight must be F32, F16 or BF16`,
    );
  const m = ggmlToMatrix(what, type, [dims[0], 1], bytes);
  return m.dtype === 'f32' ? m.data : dense(m);
}

type TypedCtor<T> = {
  new (buffer: ArrayBuffer, byteOffset: number, length: number): T;
  BYTES_PER_ELEMENT: number;
};

function view<T extends Float32Array | Uint16Array>(
  bytes: Uint8Array,
  Ctor: TypedCtor<T> & (new (n: number) => T),
): T {
  const n = bytes.length / Ctor.BYTES_PER_ELEMENT;
  if (
    bytes.buffer instanceof ArrayBuffer &&
    bytes.byteOffset === 0 &&
    bytes.byteLength === bytes.buffer.byteLength
  )
    return new Ctor(bytes.buffer, 0, n);
  const out = new Ctor(n);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

function fromQ8_0(b: Uint8Array, rows: number, cols: number): BlockMatrix {
  const h = halfValues();
  const blocks = (rows * cols) / 32;
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(blocks);
  for (let blk = 0; blk < blocks; blk++) {
    const at = blk * 34;
    scales[blk] = h[u16(b, at)];
    for (let i = 0; i < 32; i++) codes[blk * 32 + i] = b[at + 2 + i] ^ 0x80; // int8 q -> q + 128
  }
  return { dtype: 'q8', rows, cols, blockSize: 32, codes, scales };
}

function fromQ4_0(b: Uint8Array, rows: number, cols: number): BlockMatrix {
  const h = halfValues();
  const blocks = (rows * cols) / 32;
  const codes = new Uint8Array((rows * cols) / 2);
  const scales = new Float32Array(blocks);
  for (let blk = 0; blk < blocks; blk++) {
    const at = blk * 18;
    scales[blk] = h[u16(b, at)];
    const qs = at + 2;
    const out = blk * 16;
    // ggml: element j < 16 is the low nibble of qs[j], element j + 16 its high nibble.
    for (let i = 0; i < 8; i++) {
      codes[out + i] = (b[qs + 2 * i] & 15) | ((b[qs + 2 * i + 1] & 15) << 4); // elements 2i, 2i+1 < 16
      codes[out + 8 + i] = (b[qs + 2 * i] >> 4) | (b[qs + 2 * i + 1] & 0xf0); // elements 16 + 2i, 16 + 2i + 1
    }
  }
  return { dtype: 'q4', rows, cols, blockSize: 32, codes, scales };
}

/** ggml's get_scale_min_k4: the 6-bit scale (`min` false) or minimum of sub-block j, packed in 12 bytes at `at`. */
function scaleMinK4(b: Uint8Array, at: number, j: number, min: boolean): number {
  if (j < 4) return b[at + j + (min ? 4 : 0)] & 63;
  const low = min ? b[at + j + 4] >> 4 : b[at + j + 4] & 0xf;
  return low | ((b[at + j - (min ? 0 : 4)] >> 6) << 4);
}

/** Q4_K (144-byte super-blocks) -> q4, or Q5_K (176 bytes) -> q8 with codes 0..31; float zero points. */
function fromQ45K(what: string, b: Uint8Array, rows: number, cols: number, bits: 4 | 5): BlockMatrix {
  const h = halfValues();
  const superBlocks = (rows * cols) / 256;
  const superBytes = bits === 4 ? 144 : 176;
  const qsAt = bits === 4 ? 16 : 48; // Q5_K has qh[32] at 16 first
  const codes = new Uint8Array(bits === 4 ? (rows * cols) / 2 : rows * cols);
  const scales = new Float32Array(superBlocks * 8);
  const zeroPoints = new Float32Array(superBlocks * 8);
  const perRow = cols / 256;
  for (let sb = 0; sb < superBlocks; sb++) {
    const at = sb * superBytes;
    const d = h[u16(b, at)];
    const dmin = h[u16(b, at + 2)];
    for (let s = 0; s < 8; s++) {
      const scale = Math.fround(d * scaleMinK4(b, at + 4, s, false));
      const min = Math.fround(dmin * scaleMinK4(b, at + 4, s, true));
      const blk = sb * 8 + s;
      if (scale === 0 && min !== 0) {
        throw new GgufError(
          `${what}: ${bits === 4 ? 'Q4_K' : 'Q5_K'} super-block ${sb % perRow} of row ${Math.floor(sb / perRow)}, ` +
            `sub-block ${s}: scale d*sc is 0 but the minimum is ${min}; a constant block is not expressible ` +
            'as (code - zero point) * scale',
        );
      }
      scales[blk] = scale;
      zeroPoints[blk] = scale === 0 ? 0 : Math.fround(min / scale);
      // Sub-block s = 2c + hi takes the low (hi = 0) or high nibbles of qs[32c .. 32c + 32).
      const c = s >> 1;
      const shift = (s & 1) * 4;
      const q = at + qsAt + 32 * c;
      if (bits === 4) {
        const o = blk * 16;
        for (let i = 0; i < 16; i++)
          codes[o + i] = ((b[q + 2 * i] >> shift) & 15) | (((b[q + 2 * i + 1] >> shift) & 15) << 4);
      } else {
        const qh = at + 16;
        const bit = 2 * c + (s & 1);
        const o = blk * 32;
        for (let l = 0; l < 32; l++)
          codes[o + l] = ((b[q + l] >> shift) & 15) | (((b[qh + l] >> bit) & 1) << 4);
      }
    }
  }
  return { dtype: bits === 4 ? 'q4' : 'q8', rows, cols, blockSize: 32, codes, scales, zeroPoints };
}

/** Q6_K (210-byte super-blocks: ql[128], qh[64], int8 scales[16], f16 d) -> q8 with 16-value blocks. */
function fromQ6K(b: Uint8Array, rows: number, cols: number): BlockMatrix {
  const h = halfValues();
  const superBlocks = (rows * cols) / 256;
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(superBlocks * 16);
  for (let sb = 0; sb < superBlocks; sb++) {
    const at = sb * 210;
    const d = h[u16(b, at + 208)];
    for (let k = 0; k < 16; k++) scales[sb * 16 + k] = Math.fround(d * ((b[at + 192 + k] << 24) >> 24));
    const out = sb * 256;
    for (let n = 0; n < 2; n++) {
      const ql = at + 64 * n;
      const qh = at + 128 + 32 * n;
      const o = out + 128 * n;
      for (let l = 0; l < 32; l++) {
        const hb = b[qh + l];
        codes[o + l] = ((b[ql + l] & 15) | ((hb & 3) << 4)) + 96;
        codes[o + l + 32] = ((b[ql + l + 32] & 15) | (((hb >> 2) & 3) << 4)) + 96;
        codes[o + l + 64] = ((b[ql + l] >> 4) | (((hb >> 4) & 3) << 4)) + 96;
        codes[o + l + 96] = ((b[ql + l + 32] >> 4) | (((hb >> 6) & 3) << 4)) + 96;
      }
    }
  }
  return { dtype: 'q8', rows, cols, blockSize: 16, codes, scales };
}

// ---- export -------------------------------------------------------------------------------------------

/**
 * Why `m` cannot be written as Q8_0 / Q4_0 bit for bit, or undefined when it can (a float matrix can when
 * its columns are a multiple of 32: it is quantized first).
 */
export function blockExportProblem(m: Matrix, type: 'Q8_0' | 'Q4_0'): string | undefined {
  const want: BlockDtype = type === 'Q8_0' ? 'q8' : 'q4';
  if (m.cols % 32 !== 0) return `${m.cols} columns are not a multiple of 32`;
  if (!isBlock(m)) return undefined;
  if (m.dtype !== want) return `it is ${m.dtype}; ${type} holds ${want}`;
  if (m.blockSize !== 32) return `its blocks have ${m.blockSize} values; ${type} blocks have 32`;
  const zp = want === 'q8' ? 128 : 8;
  if (m.zeroPoints?.some((z) => z !== zp)) return `it has zero points other than ${zp}`;
  for (let i = 0; i < m.scales.length; i++) {
    const s = m.scales[i];
    if (!(halfToFloat(floatToHalf(s)) === s)) return `block scale ${s} (block ${i}) is not an f16 value`;
  }
  return undefined;
}

/** The matrix as ggml bytes of `type`, dims [cols, rows]. `what` names it in errors. */
export function matrixToGgml(what: string, m: Matrix, type: GgmlWriteType): Uint8Array {
  switch (type) {
    case 'F32':
      return bytes(m.dtype === 'f32' ? m.data : dense(m));
    case 'F16':
    case 'BF16': {
      const dtype = type === 'F16' ? 'f16' : 'bf16';
      return bytes(m.dtype === dtype ? m.data : toHalf(dense(m), m.rows, m.cols, dtype).data);
    }
    case 'Q8_0':
    case 'Q4_0': {
      const problem = blockExportProblem(m, type);
      if (problem) throw new GgufError(`${what}: cannot be written as ${type} exactly: ${problem}`);
      const q = isBlock(m) ? m : quantizeBlocks(dense(m), m.rows, m.cols, type === 'Q8_0' ? 'q8' : 'q4');
      return type === 'Q8_0' ? toQ8_0(q) : toQ4_0(q);
    }
  }
}

/** A norm vector as F32 bytes. */
export const vectorToGgml = (v: Float32Array): Uint8Array => bytes(v);

const bytes = (a: Float32Array | Uint16Array): Uint8Array =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function toQ8_0(q: BlockMatrix): Uint8Array {
  const blocks = q.scales.length;
  const out = new Uint8Array(blocks * 34);
  for (let blk = 0; blk < blocks; blk++) {
    const at = blk * 34;
    const hb = floatToHalf(q.scales[blk]);
    out[at] = hb & 0xff;
    out[at + 1] = hb >> 8;
    for (let i = 0; i < 32; i++) out[at + 2 + i] = q.codes[blk * 32 + i] ^ 0x80; // code - 128 as int8
  }
  return out;
}

function toQ4_0(q: BlockMatrix): Uint8Array {
  const blocks = q.scales.length;
  const out = new Uint8Array(blocks * 18);
  for (let blk = 0; blk < blocks; blk++) {
    const at = blk * 18;
    const hb = floatToHalf(q.scales[blk]);
    out[at] = hb & 0xff;
    out[at + 1] = hb >> 8;
    const c = blk * 16; // our byte i: element 2i low, 2i + 1 high
    const elem = (k: number) => (k & 1 ? q.codes[c + (k >> 1)] >> 4 : q.codes[c + (k >> 1)] & 15);
    for (let j = 0; j < 16; j++) out[at + 2 + j] = elem(j) | (elem(j + 16) << 4);
  }
  return out;
}
