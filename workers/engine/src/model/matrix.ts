/**
 * A weight matrix as it is stored: row-major [rows, cols] (rows = outputs, cols = inputs), in one of
 * the package dtypes. The graphs run each dtype as it is (quantized matrices through MatMulNBits); code
 * that needs plain numbers (the float64 reference, calibration) dequantizes rows on demand.
 *
 * Blockwise layout (q8, q4) = onnxruntime's MatMulNBits layout, so a matrix goes into a graph unchanged:
 *   codes       uint8 [rows, nBlocks, blockSize * bits / 8]  unsigned codes; for 4 bits element 2i of a
 *                                                             block is the low nibble of byte i, 2i+1 the high
 *   scales      f32   [rows, nBlocks]
 *   zeroPoints  f32   [rows, nBlocks]   optional float zero points; absent = the symmetric 2^(bits-1)
 *   value = (code - zeroPoint) * scale,   nBlocks = cols / blockSize (cols is a multiple of blockSize)
 * GGUF's Q8_0 and Q4_0 blocks map onto this exactly (code = q + 128, code = nibble), and so do the
 * k-quants that have one scale and one minimum per sub-block.
 */
export type FloatDtype = 'f32' | 'f16' | 'bf16';
export type BlockDtype = 'q8' | 'q4';
export type MatrixDtype = FloatDtype | BlockDtype;
export const MATRIX_DTYPES: readonly MatrixDtype[] = ['f32', 'f16', 'bf16', 'q8', 'q4'];

export interface F32Matrix {
  dtype: 'f32';
  rows: number;
  cols: number;
  data: Float32Array; // [rows, cols]
}

/** IEEE half or bfloat16, as their 16-bit patterns. */
export interface HalfMatrix {
  dtype: 'f16' | 'bf16';
  rows: number;
  cols: number;
  data: Uint16Array; // [rows, cols]
}

export interface BlockMatrix {
  dtype: BlockDtype;
  rows: number;
  cols: number;
  blockSize: number; // values per block along a row: 32, or 16 for some k-quant sub-blocks
  codes: Uint8Array; // [rows, nBlocks, blockSize * bits / 8]
  scales: Float32Array; // [rows, nBlocks]
  zeroPoints?: Float32Array; // [rows, nBlocks]
}

export type Matrix = F32Matrix | HalfMatrix | BlockMatrix;

export const bitsOf = (dtype: BlockDtype): 4 | 8 => (dtype === 'q4' ? 4 : 8);
export const isBlock = (m: Matrix): m is BlockMatrix => m.dtype === 'q8' || m.dtype === 'q4';
export const nBlocks = (m: BlockMatrix): number => m.cols / m.blockSize;
/** Bytes of one row's codes. */
export const rowCodeBytes = (m: BlockMatrix): number => (m.cols * bitsOf(m.dtype)) / 8;

export function f32Matrix(data: Float32Array, rows: number, cols: number): F32Matrix {
  if (data.length !== rows * cols) throw new Error(`${data.length} values for a [${rows}, ${cols}] matrix`);
  return { dtype: 'f32', rows, cols, data };
}

// ---- 16-bit floats ------------------------------------------------------------------------------------

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

let halfTable: Float32Array | undefined;

/** All 65536 half values, computed once: a table lookup beats per-element exponent math. */
export function halfValues(): Float32Array {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) halfTable[h] = sign * frac * 2 ** -24;
    else if (exp === 31) halfTable[h] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else halfTable[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return halfTable;
}

/** IEEE half bits -> value, exact for every value (subnormals, infinities and NaN included). */
export const halfToFloat = (h: number): number => halfValues()[h & 0xffff];

/** IEEE half -> single for a whole array. */
export function f16ToF32(src: Uint16Array): Float32Array {
  const table = halfValues();
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
  return out;
}

/** bfloat16 -> single for a whole array (the top half of the f32 bits). */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const bits = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return new Float32Array(bits.buffer);
}

/** Round-to-nearest-even float -> IEEE half bits. */
export function floatToHalf(v: number): number {
  f32Scratch[0] = v;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && r & 1)) r++;
    return sign | r;
  }
  let r = (e << 10) | (mant >> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && r & 1)) r++;
  return sign | r;
}

/** Round-to-nearest-even float -> bfloat16 bits. */
export function floatToBf16(v: number): number {
  f32Scratch[0] = v;
  const x = u32Scratch[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

// ---- dequantization -----------------------------------------------------------------------------------

/** Rows [start, end) as f32, [end - start, cols]: exactly the values the graphs compute with. */
export function denseRows(m: Matrix, start = 0, end = m.rows): Float32Array {
  const { cols } = m;
  if (m.dtype === 'f32') return m.data.subarray(start * cols, end * cols);
  if (!isBlock(m)) {
    const src = m.data.subarray(start * cols, end * cols);
    return m.dtype === 'f16' ? f16ToF32(src) : bf16ToF32(src);
  }
  const out = new Float32Array((end - start) * cols);
  const nb = nBlocks(m);
  const bs = m.blockSize;
  const rowBytes = rowCodeBytes(m);
  for (let r = start; r < end; r++) {
    const o = (r - start) * cols;
    for (let b = 0; b < nb; b++) {
      const s = m.scales[r * nb + b];
      const zp = m.zeroPoints ? m.zeroPoints[r * nb + b] : m.dtype === 'q4' ? 8 : 128;
      const base = o + b * bs;
      if (m.dtype === 'q8') {
        const c0 = r * rowBytes + b * bs;
        for (let i = 0; i < bs; i++) out[base + i] = (m.codes[c0 + i] - zp) * s;
      } else {
        const c0 = r * rowBytes + (b * bs) / 2;
        for (let i = 0; i < bs / 2; i++) {
          const byte = m.codes[c0 + i];
          out[base + 2 * i] = ((byte & 15) - zp) * s;
          out[base + 2 * i + 1] = ((byte >> 4) - zp) * s;
        }
      }
    }
  }
  return out;
}

/**
 * The same matrix with its rows reordered: row i of the result is row `order[i]` of `m` (a row
 * permutation keeps every block intact, so it is exact for every dtype).
 */
export function permuteRows(m: Matrix, order: ArrayLike<number>): Matrix {
  if (order.length !== m.rows) throw new Error(`row order has ${order.length} entries for ${m.rows} rows`);
  const move = <T extends Float32Array | Uint16Array | Uint8Array>(src: T, width: number): T => {
    const out = new (src.constructor as new (n: number) => T)(src.length);
    for (let i = 0; i < m.rows; i++)
      out.set(src.subarray(order[i] * width, (order[i] + 1) * width), i * width);
    return out;
  };
  if (!isBlock(m)) return { ...m, data: move(m.data, m.cols) } as Matrix;
  const nb = nBlocks(m);
  return {
    ...m,
    codes: move(m.codes, rowCodeBytes(m)),
    scales: move(m.scales, nb),
    ...(m.zeroPoints ? { zeroPoints: move(m.zeroPoints, nb) } : {}),
  };
}

/**
 * The matrices stacked along their rows (one [sum rows, cols] matrix), for one projection in place of
 * several over the same input; undefined unless all share dtype, cols, block size and zero-point use.
 */
export function stackRows(ms: Matrix[]): Matrix | undefined {
  const [a] = ms;
  const same = ms.every(
    (m) =>
      m.dtype === a.dtype &&
      m.cols === a.cols &&
      (!isBlock(m) || (isBlock(a) && m.blockSize === a.blockSize && !m.zeroPoints === !a.zeroPoints)),
  );
  if (!same) return undefined;
  const rows = ms.reduce((n, m) => n + m.rows, 0);
  const cat = <T extends Float32Array | Uint16Array | Uint8Array>(parts: T[]): T => {
    const out = new (parts[0].constructor as new (n: number) => T)(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  if (!isBlock(a))
    return { ...a, rows, data: cat(ms.map((m) => (m as F32Matrix | HalfMatrix).data)) } as Matrix;
  const bs = ms as BlockMatrix[];
  return {
    ...a,
    rows,
    codes: cat(bs.map((m) => m.codes)),
    scales: cat(bs.map((m) => m.scales)),
    ...(a.zeroPoints ? { zeroPoints: cat(bs.map((m) => m.zeroPoints!)) } : {}),
  };
}

/** Rows `ids` of the matrix, in that order, as a matrix of the same dtype (an exact copy of those rows). */
export function selectRows(m: Matrix, ids: ArrayLike<number>): Matrix {
  const parts = Array.from(ids, (r) => rowView(m, r, 1));
  return parts.length === 0 ? { ...m, rows: 0 } : stackRows(parts)!;
}

/** Rows [start, start + rows) as a matrix over the same arrays (no copy). */
export function rowView(m: Matrix, start: number, rows: number): Matrix {
  if (!isBlock(m))
    return { ...m, rows, data: m.data.subarray(start * m.cols, (start + rows) * m.cols) } as Matrix;
  const nb = nBlocks(m);
  const rb = rowCodeBytes(m);
  return {
    ...m,
    rows,
    codes: m.codes.subarray(start * rb, (start + rows) * rb),
    scales: m.scales.subarray(start * nb, (start + rows) * nb),
    ...(m.zeroPoints ? { zeroPoints: m.zeroPoints.subarray(start * nb, (start + rows) * nb) } : {}),
  };
}

/** The whole matrix as f32 (the stored array itself for f32). */
export const dense = (m: Matrix): Float32Array => denseRows(m);

const denseCache = new WeakMap<Matrix, Float32Array>();

/**
 * `dense(m)`, computed once per matrix and kept as long as the matrix lives: for the float64 reference
 * and calibration, which read every weight many times (a quantized model then also holds its f32 copy).
 */
export function denseCached(m: Matrix): Float32Array {
  if (m.dtype === 'f32') return m.data;
  let d = denseCache.get(m);
  if (!d) {
    d = dense(m);
    denseCache.set(m, d);
  }
  return d;
}

// ---- quantization -------------------------------------------------------------------------------------

/**
 * Symmetric blockwise quantization exactly as llama.cpp's reference quantizers (quantize_row_q8_0 /
 * quantize_row_q4_0): one scale per 32 values, rounded to f16 (so a q8/q4 package exports to GGUF
 * Q8_0/Q4_0 bit for bit). q8: d = amax / 127, q = round(x / d); q4: d = max / -8 where max is the value of
 * largest magnitude, q = min(15, trunc(x / d + 8.5)).
 */
export function quantizeBlocks(
  values: Float32Array,
  rows: number,
  cols: number,
  dtype: BlockDtype,
): BlockMatrix {
  const bs = 32;
  if (cols % bs !== 0) throw new Error(`cannot quantize ${cols} columns in blocks of ${bs}`);
  const nb = cols / bs;
  const bits = bitsOf(dtype);
  const codes = new Uint8Array((rows * cols * bits) / 8);
  const scales = new Float32Array(rows * nb);
  for (let blk = 0; blk < rows * nb; blk++) {
    const x = values.subarray(blk * bs, blk * bs + bs);
    if (dtype === 'q8') {
      let amax = 0;
      for (let i = 0; i < bs; i++) amax = Math.max(amax, Math.abs(x[i]));
      const d = Math.fround(amax / 127);
      const id = d ? Math.fround(1 / d) : 0;
      scales[blk] = halfToFloat(floatToHalf(d));
      for (let i = 0; i < bs; i++) codes[blk * bs + i] = roundHalfAway(Math.fround(x[i] * id)) + 128;
    } else {
      let amax = 0;
      let max = 0;
      for (let i = 0; i < bs; i++) {
        if (Math.abs(x[i]) > amax) {
          amax = Math.abs(x[i]);
          max = x[i];
        }
      }
      const d = Math.fround(max / -8);
      const id = d ? Math.fround(1 / d) : 0;
      scales[blk] = halfToFloat(floatToHalf(d));
      for (let i = 0; i < bs / 2; i++) {
        const lo = Math.min(15, Math.trunc(Math.fround(Math.fround(x[i * 2] * id) + 8.5)));
        const hi = Math.min(15, Math.trunc(Math.fround(Math.fround(x[i * 2 + 1] * id) + 8.5)));
        codes[(blk * bs) / 2 + i] = lo | (hi << 4);
      }
    }
  }
  return { dtype, rows, cols, blockSize: bs, codes, scales };
}

/** C's roundf: halves away from zero. */
const roundHalfAway = (v: number): number => Math.sign(v) * Math.round(Math.abs(v));

/** f32 values -> the 16-bit dtype. */
export function toHalf(values: Float32Array, rows: number, cols: number, dtype: 'f16' | 'bf16'): HalfMatrix {
  const conv = dtype === 'f16' ? floatToHalf : floatToBf16;
  const data = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) data[i] = conv(values[i]);
  return { dtype, rows, cols, data };
}

/**
 * Converts a matrix to `dtype`. A blockwise target needs cols to be a multiple of 32: other matrices
 * keep their own dtype (returned as they are), and the manifest records what each tensor became.
 */
export function convertMatrix(m: Matrix, dtype: MatrixDtype): Matrix {
  if (m.dtype === dtype) return m;
  const values = dense(m);
  if (dtype === 'f32') return f32Matrix(values.slice(), m.rows, m.cols);
  if (dtype === 'f16' || dtype === 'bf16') return toHalf(values, m.rows, m.cols, dtype);
  if (m.cols % 32 !== 0) return m;
  return quantizeBlocks(values, m.rows, m.cols, dtype);
}
