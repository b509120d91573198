/**
 * The KV cache of one stage, in buffers the engine owns. Position-major, so the cached past is always a
 * contiguous prefix that the graph reads through a zero-copy `subarray` view:
 *   K, V: Float32Array(maxSeq * nLayers * nKvHeads * headDim), laid out [pos, layer, kvHead, headDim].
 * A forward of T rows appends one contiguous block [T, layer, kvHead, headDim] at `length`.
 */
export class KvCache {
  readonly k: Float32Array;
  readonly v: Float32Array;
  /** Floats per position: nLayers * nKvHeads * headDim. */
  readonly rowSize: number;
  private len = 0;

  constructor(
    readonly maxSeq: number,
    readonly nLayers: number,
    readonly nKvHeads: number,
    readonly headDim: number,
  ) {
    this.rowSize = nLayers * nKvHeads * headDim;
    this.k = new Float32Array(maxSeq * this.rowSize);
    this.v = new Float32Array(maxSeq * this.rowSize);
  }

  get length(): number {
    return this.len;
  }

  /** Shape [P+1, L, kvH, hd] of `graphPast()`. */
  get graphPastDims(): number[] {
    return [this.len + 1, this.nLayers, this.nKvHeads, this.headDim];
  }

  /** Zero-copy views of the cached prefix [0, length). */
  past(): { k: Float32Array; v: Float32Array } {
    const n = this.len * this.rowSize;
    return { k: this.k.subarray(0, n), v: this.v.subarray(0, n) };
  }

  /**
   * What the stage graph reads: zero-copy views of rows [0, length + 1), the cached prefix plus one
   * zeroed scratch row (the slot the next forward writes first; the graph masks it out). The extra row
   * keeps every tensor dimension positive (ORT's strided FusedMatMul fails on an empty past).
   * Needs length < maxSeq, which `checkRoom(rows >= 1)` guarantees.
   */
  graphPast(): { k: Float32Array; v: Float32Array } {
    const start = this.len * this.rowSize;
    const n = start + this.rowSize;
    this.k.fill(0, start, n);
    this.v.fill(0, start, n);
    return { k: this.k.subarray(0, n), v: this.v.subarray(0, n) };
  }

  /** Throws a clear error unless `rows` more positions fit. */
  checkRoom(rows: number): void {
    if (this.len + rows > this.maxSeq) {
      throw new Error(
        `context overflow: ${this.len} cached + ${rows} new positions > maxSeqLen ${this.maxSeq} ` +
          '(truncate the cache or raise maxSeqLen)',
      );
    }
  }

  /** Copies the K/V of `rows` new positions ([rows, L, kvH, hd] each) to [length, length + rows). */
  append(newK: Float32Array, newV: Float32Array, rows: number): void {
    this.checkRoom(rows);
    const n = rows * this.rowSize;
    if (newK.length !== n || newV.length !== n) {
      throw new Error(`kv append: expected ${n} values per tensor, got ${newK.length} and ${newV.length}`);
    }
    this.k.set(newK, this.len * this.rowSize);
    this.v.set(newV, this.len * this.rowSize);
    this.len += rows;
  }

  /** Forgets every position >= n, in O(1). */
  truncate(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.len)
      throw new Error(`truncate(${n}) outside [0, ${this.len}]`);
    this.len = n;
  }
}
