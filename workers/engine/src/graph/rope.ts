/**
 * Rotary-embedding tables, the one definition shared by the ONNX graphs and the float64 reference.
 *
 * Angles are computed in float32 arithmetic exactly as llama2.c's run.c does
 * (`freq = 1.0f / powf(theta, head_dim / (float)head_size); val = pos * freq`), which is also what
 * Hugging Face's float32 `inv_freq @ position_ids` computes, so greedy outputs match those programs.
 * cos/sin of that float32 angle are then taken in float64.
 *
 * Layout: [maxSeq, headDim] in the HF rotate_half layout: columns i and i + headDim/2 share frequency i.
 */
export interface RopeTables {
  cos: Float64Array; // [maxSeq, headDim]
  sin: Float64Array; // [maxSeq, headDim]
}

export function ropeTables(headDim: number, theta: number, maxSeq: number): RopeTables {
  if (headDim % 2 !== 0) throw new Error(`rotary embeddings need an even head size, got ${headDim}`);
  const half = headDim / 2;
  const f = Math.fround;
  const freq = new Float64Array(half);
  for (let i = 0; i < half; i++) freq[i] = f(1 / f(f(theta) ** f((2 * i) / headDim)));
  const cos = new Float64Array(maxSeq * headDim);
  const sin = new Float64Array(maxSeq * headDim);
  for (let p = 0; p < maxSeq; p++) {
    for (let i = 0; i < half; i++) {
      const a = f(p * freq[i]);
      const c = Math.cos(a);
      const s = Math.sin(a);
      cos[p * headDim + i] = c;
      cos[p * headDim + i + half] = c;
      sin[p * headDim + i] = s;
      sin[p * headDim + i + half] = s;
    }
  }
  return { cos, sin };
}
