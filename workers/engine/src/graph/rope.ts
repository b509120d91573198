/**
 * Rotary-embedding tables, the one definition shared by the ONNX graphs, the float64 reference and the
 * calibration forward.
 *
 * Inverse frequencies are computed in float32 arithmetic exactly as transformers' rope init functions do
 * (`inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim))`, then the scaling of
 * `config.ropeScaling`), which for plain RoPE is also llama2.c's run.c
 * (`freq = 1.0f / powf(theta, head_dim / (float)head_size)`). Angles are the float32 product
 * `pos * inv_freq` (HF's float32 `inv_freq @ position_ids`); cos/sin of that angle are taken in float64.
 *
 * Layout: [maxSeq, headDim] in the HF rotate_half layout: columns i and i + headDim/2 share frequency i.
 */
import { headDim, type LlamaConfig } from '../model/llama';

export interface RopeTables {
  cos: Float64Array; // [maxSeq, headDim]
  sin: Float64Array; // [maxSeq, headDim]
}

const f = Math.fround;

/** The config fields RoPE depends on. */
export type RopeConfig = Pick<LlamaConfig, 'dim' | 'nHeads' | 'headDim' | 'ropeTheta' | 'ropeScaling'>;

/** Plain RoPE inverse frequencies [hd/2], float32 values. */
function defaultInvFreq(hd: number, theta: number): Float64Array {
  const inv = new Float64Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) inv[i] = f(1 / f(f(theta) ** f((2 * i) / hd)));
  return inv;
}

/**
 * transformers' `_compute_llama3_parameters`: wavelengths shorter than original/high_freq_factor keep
 * their frequency, longer than original/low_freq_factor are divided by `factor`, and the band between
 * is interpolated smoothly. Every step in float32, as torch computes it on the float32 inv_freq tensor
 * (python scalars are cast to float32; `scalar / t` is `t.reciprocal() * scalar`).
 */
function llama3InvFreq(
  inv: Float64Array,
  s: Extract<NonNullable<LlamaConfig['ropeScaling']>, { type: 'llama3' }>,
): Float64Array {
  const old = s.originalMaxPositionEmbeddings;
  const lowWavelen = f(old / s.lowFreqFactor);
  const highWavelen = f(old / s.highFreqFactor);
  const out = new Float64Array(inv.length);
  for (let i = 0; i < inv.length; i++) {
    const wavelen = f(f(1 / inv[i]) * f(2 * Math.PI));
    const scaled = wavelen > lowWavelen ? f(inv[i] / f(s.factor)) : inv[i];
    if (wavelen < highWavelen || wavelen > lowWavelen) {
      out[i] = scaled;
      continue;
    }
    // medium frequencies: (1 - smooth) * inv / factor + smooth * inv
    const smooth = f(
      f(f(f(1 / wavelen) * f(old)) - f(s.lowFreqFactor)) / f(s.highFreqFactor - s.lowFreqFactor),
    );
    out[i] = f(f(f(f(1 - smooth) * scaled) / f(s.factor)) + f(smooth * scaled));
  }
  return out;
}

/** Inverse frequencies [headDim/2] of the config's RoPE, float32 values. */
export function ropeInvFreq(c: RopeConfig): Float64Array {
  const hd = headDim(c as LlamaConfig);
  if (hd % 2 !== 0) throw new Error(`rotary embeddings need an even head size, got ${hd}`);
  const inv = defaultInvFreq(hd, c.ropeTheta);
  const s = c.ropeScaling;
  if (!s || s.type === 'dynamic') return inv; // dynamic: plain up to maxPositionEmbeddings (ropeTables)
  if (s.type === 'linear') return inv.map((v) => f(v / f(s.factor)));
  return llama3InvFreq(inv, s);
}

export function ropeTables(c: RopeConfig, maxSeq: number): RopeTables {
  const s = c.ropeScaling;
  // transformers' dynamic NTK recomputes the base once a forward reaches past max_position_embeddings,
  // from the longest position of that call, and keeps the keys already cached with their old rotation:
  // the result depends on how the sequence was split into calls, which no KV-cached (let alone
  // speculative) decoder reproduces. Within the window it is plain RoPE, so that is what is served.
  if (s?.type === 'dynamic' && maxSeq > s.maxPositionEmbeddings) {
    throw new Error(
      `rope_scaling 'dynamic' is served only within max_position_embeddings = ${s.maxPositionEmbeddings} ` +
        `positions (asked for ${maxSeq})`,
    );
  }
  const inv = ropeInvFreq(c);
  const hd = 2 * inv.length;
  const half = inv.length;
  const cos = new Float64Array(maxSeq * hd);
  const sin = new Float64Array(maxSeq * hd);
  for (let p = 0; p < maxSeq; p++) {
    for (let i = 0; i < half; i++) {
      const a = f(p * inv[i]);
      const co = Math.cos(a);
      const si = Math.sin(a);
      cos[p * hd + i] = co;
      cos[p * hd + i + half] = co;
      sin[p * hd + i] = si;
      sin[p * hd + i + half] = si;
    }
  }
  return { cos, sin };
}
