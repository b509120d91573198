/**
 * Stored matrices in a graph, each dtype as it is (model/matrix.ts):
 * - f32: a Gemm over the f32 initializer;
 * - f16 / bf16: the 16-bit initializer and a Cast to f32, which ORT's CPU provider folds into an f32
 *   weight at session start (it has no fast 16-bit GEMM on x86; the package and the engine's own memory
 *   keep the 16-bit bytes);
 * - q8 / q4: com.microsoft MatMulNBits over the codes, scales and zero points, which reads the blocks
 *   directly (accuracy_level 4 quantizes the activations to int8 per block and runs integer dot products).
 * The token embedding is a Gather of the stored rows, dequantized in the graph, so a tied classifier and
 * the embedding share one initializer of codes.
 */
import { type BlockMatrix, bitsOf, isBlock, type Matrix, nBlocks, rowView, stackRows } from '../model/matrix';
import type { GraphBuilder, Tensor } from './onnx';

/** MatMulNBits accuracy_level: 0 = unset (f32 compute), 4 = int8 activations (fastest on x86). */
export type AccuracyLevel = 0 | 1 | 2 | 3 | 4;

export interface MatrixGraphOptions {
  accuracyLevel?: AccuracyLevel;
}

/** The default accuracy level, by measurement (docs/BENCHMARKS.md, "Weight formats"). */
export const DEFAULT_ACCURACY_LEVEL: AccuracyLevel = 4;

/**
 * Rows a block forward may have and still compute every row exactly as a single-row forward does, for a
 * graph with blockwise matrices at accuracy_level 4. onnxruntime 1.30's int8 path is not batch-invariant:
 * on stories260K q4, rows of a 3-row block differed from single-token forwards by up to 8e-2 in the logits
 * at some positions, and 4-16-row blocks by up to 9e-2 (f32 and accuracy_level 0 graphs: 1e-5, float
 * summation order). Only single rows are bit-identical, so EESD and DV verify such stages row by row
 * (lossless relative to AR, at the price of one forward per verified row); PPSD and SPD already run one
 * token per stage per tick.
 */
export const INT8_CONSISTENT_ROWS = 1;

/** `INT8_CONSISTENT_ROWS` when a graph over these matrices has the int8 path, else undefined (any). */
export function consistentRows(ms: Matrix[], accuracyLevel: AccuracyLevel = DEFAULT_ACCURACY_LEVEL) {
  return accuracyLevel === 4 && ms.some(isBlock) ? INT8_CONSISTENT_ROWS : undefined;
}

const HALF_TYPE = { f16: 'float16', bf16: 'bfloat16' } as const;

interface BlockInits {
  codes: Tensor; // uint8 [rows, nBlocks, blockBytes]
  scales: Tensor; // f32 [rows * nBlocks]
  zeroPoints?: Tensor; // f32 [rows * nBlocks]
}

function blockInits(g: GraphBuilder, name: string, m: BlockMatrix): BlockInits {
  const nb = nBlocks(m);
  const blockBytes = (m.blockSize * bitsOf(m.dtype)) / 8;
  return {
    codes: g.initializer(name, 'uint8', [m.rows, nb, blockBytes], m.codes),
    scales: g.initializer(`${name}.scales`, 'float32', [m.rows * nb], m.scales),
    zeroPoints: m.zeroPoints
      ? g.initializer(`${name}.zero_points`, 'float32', [m.rows * nb], m.zeroPoints)
      : undefined,
  };
}

/**
 * Why onnxruntime cannot run this matrix, if it cannot: MatMulNBits takes float zero points only for
 * 2- and 4-bit blocks (GGUF Q5_K imports as 8-bit blocks with float zero points).
 */
export function unrunnableReason(m: Matrix): string | undefined {
  if (m.dtype === 'q8' && m.zeroPoints)
    return "8-bit blocks with float zero points (GGUF Q5_K), which onnxruntime's MatMulNBits cannot run";
  return undefined;
}

/**
 * 4-bit blocks with float zero points (GGUF Q4_K) run, exactly, through MatMulNBits' unpacked path, which
 * measured about 25x slower per weight than symmetric blocks on this project's CPU (docs/BENCHMARKS.md).
 */
export const isSlowPath = (m: Matrix): boolean => m.dtype === 'q4' && m.zeroPoints !== undefined;

/** y = x W^T (+ bias): x [.., cols] -> [.., rows]. */
export function matmulWeight(
  g: GraphBuilder,
  x: Tensor,
  m: Matrix,
  name: string,
  opts: MatrixGraphOptions = {},
  bias?: Tensor,
): Tensor {
  if (m.dtype === 'f32') return g.linear(x, g.weight(name, m.data, [m.rows, m.cols]), bias);
  if (!isBlock(m)) {
    const w16 = g.initializer(name, HALF_TYPE[m.dtype], [m.rows, m.cols], m.data);
    return g.linear(x, g.cast(w16, 'float32'), bias);
  }
  const problem = unrunnableReason(m);
  if (problem) throw new Error(`${name}: ${problem}; convert it (ppsd quantize / import --dtype)`);
  const b = blockInits(g, name, m);
  const inputs = [x, b.codes, b.scales];
  if (b.zeroPoints) inputs.push(b.zeroPoints);
  const attrs = {
    K: m.cols,
    N: m.rows,
    bits: bitsOf(m.dtype),
    block_size: m.blockSize,
    accuracy_level: opts.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL,
  };
  const y = g.op('MatMulNBits', inputs, attrs, 1, 'com.microsoft')[0];
  return bias ? g.add(y, bias) : y;
}

/** Stacked matrices by their first part (several graphs over the same layers share one). */
const stacked = new WeakMap<Matrix, { parts: Matrix[]; matrix: Matrix | undefined }>();

/**
 * The row-stacked matrix of `owner[keys]`, made once: the first call stacks the parts and rebinds each
 * `owner[key]` to a view of its rows inside the stacked arrays (the same values, so the model keeps one
 * copy of its weights rather than the parts and the stack); later calls find it again. Undefined when
 * the parts' storage differs.
 */
function stackedOnce<K extends string>(owner: Record<K, Matrix>, keys: K[]): Matrix | undefined {
  const parts = keys.map((k) => owner[k]);
  const known = stacked.get(parts[0]);
  if (known?.parts.every((m, i) => m === parts[i])) return known.matrix;
  const matrix = stackRows(parts);
  let row = 0;
  const views = parts.map((m) => {
    const view = matrix ? rowView(matrix, row, m.rows) : m;
    row += m.rows;
    return view;
  });
  keys.forEach((k, i) => {
    owner[k] = views[i];
  });
  stacked.set(views[0], { parts: views, matrix });
  return matrix;
}

/**
 * Several projections of the same input, [x W1^T, x W2^T, ...] for W = owner[keys]: one matmul over the
 * row-stacked matrices and a Split when their storage matches (one weight stream and one kernel call
 * instead of several, which is much of a small model's per-token overhead), else one matmul each.
 */
export function matmulWeights<K extends string>(
  g: GraphBuilder,
  x: Tensor,
  owner: Record<K, Matrix>,
  keys: K[],
  name: string,
  opts: MatrixGraphOptions = {},
): Tensor[] {
  const all = stackedOnce(owner, keys);
  if (!all) return keys.map((k) => matmulWeight(g, x, owner[k], `${name}.${k}`, opts));
  const y = matmulWeight(g, x, all, name, opts);
  return g.split(
    y,
    -1,
    keys.map((k) => owner[k].rows),
  );
}

/** Rows `ids` of the matrix as f32: ids int64 [T] -> [T, cols] (the token embedding lookup). */
export function embedRows(g: GraphBuilder, m: Matrix, ids: Tensor, name: string): Tensor {
  if (m.dtype === 'f32') return g.gather(g.weight(name, m.data, [m.rows, m.cols]), ids);
  if (!isBlock(m)) {
    const w16 = g.initializer(name, HALF_TYPE[m.dtype], [m.rows, m.cols], m.data);
    return g.cast(g.gather(w16, ids), 'float32');
  }
  const b = blockInits(g, name, m);
  const nb = nBlocks(m);
  const codes = g.gather(b.codes, ids); // uint8 [T, nb, blockBytes]
  let q: Tensor; // f32 [T, nb, blockSize]
  if (m.dtype === 'q8') {
    q = g.cast(codes, 'float32');
  } else {
    // byte i of a block holds element 2i in its low nibble and 2i+1 in its high nibble
    const high = g.bitShift(codes, g.u8(4), 'RIGHT'); // uint8 [T, nb, bs/2]
    const highF = g.cast(high, 'float32');
    const lowF = g.sub(g.cast(codes, 'float32'), g.mul(highF, g.f32(16)));
    const pairs = g.concat([g.unsqueeze(lowF, [-1]), g.unsqueeze(highF, [-1])], -1); // [T, nb, bs/2, 2]
    q = g.reshape(pairs, [-1, nb, m.blockSize]);
  }
  const perBlock = (t: Tensor) => g.gather(g.reshape(t, [m.rows, nb, 1]), ids); // [T, nb, 1]
  const zp = b.zeroPoints ? perBlock(b.zeroPoints) : g.f32(m.dtype === 'q4' ? 8 : 128);
  return g.reshape(g.mul(g.sub(q, zp), perBlock(b.scales)), [-1, m.cols]); // [T, cols]
}
