/**
 * The KV cache of one stage, in buffers the engine owns: one K and one V buffer per layer, each
 * position-major [maxSeq, kvHead, headDim], so a layer's cached past is a contiguous prefix that the
 * graph reads through a zero-copy `subarray` view (input `past_k.<j>` / `past_v.<j>`), and nothing
 * O(context) is copied per token. A forward of T rows appends T rows to every layer at `length`.
 * Buffers start small and double as the context grows (up to maxSeq), so memory follows the longest
 * context actually used rather than the model's maximum; a growth copies the prefix once (amortized O(1)
 * per position).
 */
/** Rows a cache starts with (it doubles from there). */
const INITIAL_ROWS = 64;

export class KvCache {
  /** K of layer j (stage-local index): Float32Array(capacity * kvH * hd), [pos, kvHead, headDim]. */
  k: Float32Array[];
  /** V of layer j, same layout. */
  v: Float32Array[];
  /** Floats per position and layer: nKvHeads * headDim. */
  readonly rowSize: number;
  private len = 0;

  constructor(
    readonly maxSeq: number,
    readonly nLayers: number,
    readonly nKvHeads: number,
    readonly headDim: number,
  ) {
    this.rowSize = nKvHeads * headDim;
    const rows = Math.min(maxSeq, INITIAL_ROWS);
    this.k = Array.from({ length: nLayers }, () => new Float32Array(rows * this.rowSize));
    this.v = Array.from({ length: nLayers }, () => new Float32Array(rows * this.rowSize));
  }

  /** Positions the buffers hold now. */
  get capacity(): number {
    return this.k[0].length / this.rowSize;
  }

  /** Makes room for `rows` positions (rows <= maxSeq), doubling the buffers as needed. */
  private reserve(rows: number): void {
    if (rows <= this.capacity) return;
    const next = Math.min(this.maxSeq, Math.max(rows, 2 * this.capacity));
    const keep = this.len * this.rowSize;
    const grow = (b: Float32Array) => {
      const out = new Float32Array(next * this.rowSize);
      out.set(b.subarray(0, keep));
      return out;
    };
    this.k = this.k.map(grow);
    this.v = this.v.map(grow);
  }

  get length(): number {
    return this.len;
  }

  /** Shape [P+1, kvH, hd] of each view `graphPast()` returns. */
  get graphPastDims(): number[] {
    return [this.len + 1, this.nKvHeads, this.headDim];
  }

  /** Zero-copy views of layer j's cached prefix [0, length). */
  past(j: number): { k: Float32Array; v: Float32Array } {
    const n = this.len * this.rowSize;
    return { k: this.k[j].subarray(0, n), v: this.v[j].subarray(0, n) };
  }

  /**
   * What the stage graph reads, per layer: zero-copy views of rows [0, length + 1), the cached prefix
   * plus one zeroed scratch row (the slot the next forward writes first; the graph masks it out). The
   * extra row keeps every tensor dimension positive (ORT's strided FusedMatMul fails on an empty past).
   * O(layers * rowSize) work, independent of the context. Needs length < maxSeq (`checkRoom(rows >= 1)`).
   */
  graphPast(): { k: Float32Array[]; v: Float32Array[] } {
    this.reserve(this.len + 1);
    const start = this.len * this.rowSize;
    const n = start + this.rowSize;
    for (let j = 0; j < this.nLayers; j++) {
      this.k[j].fill(0, start, n);
      this.v[j].fill(0, start, n);
    }
    return {
      k: this.k.map((b) => b.subarray(0, n)),
      v: this.v.map((b) => b.subarray(0, n)),
    };
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

  /**
   * Copies the K/V of `rows` new positions to [length, length + rows) of every layer. `newK`/`newV` are
   * one block [rows, L, kvH, hd] (the graph's `new_k`/`new_v`): row t of layer j is at (t*L + j)*rowSize.
   */
  append(newK: Float32Array, newV: Float32Array, rows: number): void {
    this.checkRoom(rows);
    this.reserve(this.len + rows);
    const r = this.rowSize;
    const n = rows * this.nLayers * r;
    if (newK.length !== n || newV.length !== n) {
      throw new Error(`kv append: expected ${n} values per tensor, got ${newK.length} and ${newV.length}`);
    }
    const L = this.nLayers;
    for (let t = 0; t < rows; t++) {
      const dst = (this.len + t) * r;
      for (let j = 0; j < L; j++) {
        const src = (t * L + j) * r;
        this.k[j].set(newK.subarray(src, src + r), dst);
        this.v[j].set(newV.subarray(src, src + r), dst);
      }
    }
    this.len += rows;
  }

  /** Forgets every position >= n, in O(1). */
  truncate(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.len)
      throw new Error(`truncate(${n}) outside [0, ${this.len}]`);
    this.len = n;
  }
}
