/**
 * Small dense linear algebra for calibration, in plain typed-array loops (row-major everywhere).
 * Sizes are model widths (64 .. 768), so clarity beats blocking tricks.
 */

/**
 * out[t, o] = sum_i x[t, i] * w[o, i] (+ bias[o]): rows of x through a [outDim, inDim] weight.
 * Float32 only (one element type keeps V8's loops monomorphic); accumulates in float64.
 */
export function linearRows(
  x: Float32Array,
  rows: number,
  inDim: number,
  w: Float32Array,
  outDim: number,
  out: Float32Array,
  bias?: Float32Array,
): void {
  const n4 = inDim & ~3;
  for (let t = 0; t < rows; t++) {
    const xo = t * inDim;
    const oo = t * outDim;
    for (let o = 0; o < outDim; o++) {
      const wo = o * inDim;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let i = 0;
      for (; i < n4; i += 4) {
        s0 += x[xo + i] * w[wo + i];
        s1 += x[xo + i + 1] * w[wo + i + 1];
        s2 += x[xo + i + 2] * w[wo + i + 2];
        s3 += x[xo + i + 3] * w[wo + i + 3];
      }
      for (; i < inDim; i++) s0 += x[xo + i] * w[wo + i];
      out[oo + o] = s0 + s1 + s2 + s3 + (bias ? bias[o] : 0);
    }
  }
}

/** RMSNorm of each row: out = x / sqrt(mean(x^2) + eps) * g. Returns the per-row inverse rms. */
export function rmsnormRows(
  x: Float32Array,
  rows: number,
  dim: number,
  g: Float32Array,
  eps: number,
  out: Float32Array,
): Float64Array {
  const inv = new Float64Array(rows);
  for (let t = 0; t < rows; t++) {
    const o = t * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
    const r = 1 / Math.sqrt(ss / dim + eps);
    inv[t] = r;
    for (let i = 0; i < dim; i++) out[o + i] = x[o + i] * r * g[i];
  }
  return inv;
}

/** Softmax of one row in place (float64), returns log-sum-exp. */
export function softmaxInPlace(z: Float64Array | Float32Array, offset: number, n: number): number {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) if (z[offset + i] > max) max = z[offset + i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(z[offset + i] - max);
    z[offset + i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) z[offset + i] /= sum;
  return max + Math.log(sum);
}

/** Index of the largest of z[offset .. offset+n) (first on ties). */
export function argmaxAt(z: ArrayLike<number>, offset: number, n: number): number {
  let best = 0;
  let bv = z[offset];
  for (let i = 1; i < n; i++) {
    if (z[offset + i] > bv) {
      bv = z[offset + i];
      best = i;
    }
  }
  return best;
}

/**
 * In-place Cholesky factorisation of a symmetric positive-definite [n, n] matrix (lower triangle L with
 * A = L L^T; the upper triangle is left as is). Throws if A is not positive definite.
 */
export function cholesky(a: Float64Array, n: number): void {
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j];
    for (let k = 0; k < j; k++) d -= a[j * n + k] * a[j * n + k];
    if (!(d > 0)) throw new Error(`cholesky: matrix is not positive definite (pivot ${j} = ${d})`);
    const ljj = Math.sqrt(d);
    a[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let s = a[i * n + j];
      for (let k = 0; k < j; k++) s -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = s / ljj;
    }
  }
}

/** Solves (L L^T) X = B for X in place, B [n, m] row-major, L from `cholesky`. */
export function choleskySolve(l: Float64Array, n: number, b: Float64Array, m: number): void {
  // forward: L Y = B
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < i; k++) {
      const lik = l[i * n + k];
      if (lik === 0) continue;
      for (let c = 0; c < m; c++) b[i * m + c] -= lik * b[k * m + c];
    }
    const inv = 1 / l[i * n + i];
    for (let c = 0; c < m; c++) b[i * m + c] *= inv;
  }
  // backward: L^T X = Y
  for (let i = n - 1; i >= 0; i--) {
    for (let k = i + 1; k < n; k++) {
      const lki = l[k * n + i];
      if (lki === 0) continue;
      for (let c = 0; c < m; c++) b[i * m + c] -= lki * b[k * m + c];
    }
    const inv = 1 / l[i * n + i];
    for (let c = 0; c < m; c++) b[i * m + c] *= inv;
  }
}
