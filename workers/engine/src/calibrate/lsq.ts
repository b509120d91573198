/**
 * Ridge-regularised least squares for affine maps y = W x + b, through the normal equations in float64
 * and a Cholesky solve: (X~^T X~ + lambda D) B = X~^T Y with X~ = [X, 1] and D = diag(1, .., 1, 0)
 * (the bias is not shrunk). `lambda` is relative: it is scaled by the mean diagonal of X^T X.
 */
import { cholesky, choleskySolve } from './linalg';

export interface AffineMap {
  weight: Float32Array; // [outDim, inDim] row-major: y = W x + b
  bias: Float32Array; // [outDim]
}

/** Accumulates X~^T X~ and X~^T Y over batches of rows, then solves. */
export class LeastSquares {
  private readonly xtx: Float64Array; // [(in+1), (in+1)]
  private readonly xty: Float64Array; // [(in+1), out]
  rows = 0;

  constructor(
    readonly inDim: number,
    readonly outDim: number,
  ) {
    const n = inDim + 1;
    this.xtx = new Float64Array(n * n);
    this.xty = new Float64Array(n * outDim);
  }

  /** Adds `rows` rows: x [rows, inDim], y [rows, outDim]. */
  add(x: ArrayLike<number>, y: ArrayLike<number>, rows: number, xOffset = 0, yOffset = 0): void {
    const { inDim, outDim } = this;
    const n = inDim + 1;
    const xr = new Float64Array(n);
    for (let t = 0; t < rows; t++) {
      const xo = xOffset + t * inDim;
      const yo = yOffset + t * outDim;
      for (let i = 0; i < inDim; i++) xr[i] = x[xo + i];
      xr[inDim] = 1;
      for (let i = 0; i < n; i++) {
        const xi = xr[i];
        if (xi === 0) continue;
        const ro = i * n;
        for (let j = 0; j <= i; j++) this.xtx[ro + j] += xi * xr[j];
        const yr = i * outDim;
        for (let o = 0; o < outDim; o++) this.xty[yr + o] += xi * y[yo + o];
      }
    }
    this.rows += rows;
  }

  solve(lambda = 1e-3): AffineMap {
    const { inDim, outDim } = this;
    const n = inDim + 1;
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++)
      for (let j = 0; j <= i; j++) a[i * n + j] = a[j * n + i] = this.xtx[i * n + j];
    let trace = 0;
    for (let i = 0; i < inDim; i++) trace += a[i * n + i];
    const ridge = lambda * Math.max(trace / inDim, 1e-12);
    for (let i = 0; i < inDim; i++) a[i * n + i] += ridge;
    // a tiny ridge on the bias too, so an all-constant design stays solvable
    a[inDim * n + inDim] += 1e-12 * Math.max(this.rows, 1);
    cholesky(a, n);
    const b = Float64Array.from(this.xty);
    choleskySolve(a, n, b, outDim); // b = [W^T; bias^T]  [(in+1), out]
    const weight = new Float32Array(outDim * inDim);
    const bias = new Float32Array(outDim);
    for (let o = 0; o < outDim; o++) {
      for (let i = 0; i < inDim; i++) weight[o * inDim + i] = b[i * outDim + o];
      bias[o] = b[inDim * outDim + o];
    }
    return { weight, bias };
  }
}

/** One-shot convenience: fit y = W x + b over all rows. */
export function fitAffine(
  x: ArrayLike<number>,
  y: ArrayLike<number>,
  rows: number,
  inDim: number,
  outDim: number,
  lambda = 1e-3,
): AffineMap {
  const ls = new LeastSquares(inDim, outDim);
  ls.add(x, y, rows);
  return ls.solve(lambda);
}
