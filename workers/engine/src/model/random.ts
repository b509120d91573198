/**
 * Random-weight Llama models of any shape, deterministic in a seed: real compute cost without real
 * weights (benchmarks at realistic shapes, `ppsd synth`), and small non-degenerate models for tests.
 */
import { type LayerWeights, type LlamaConfig, type LlamaModel, tensorShapes } from './llama';
import { convertMatrix, f32Matrix, type MatrixDtype } from './matrix';

export interface RandomLlamaOptions {
  /** Standard deviation of embeddings and linear weights (default 0.02, GPT-2/Llama init). */
  std?: number;
  /** Residual projections (wo, w2) use std / sqrt(2 * nLayers) (GPT-2's scaled init; default true). */
  scaleResiduals?: boolean;
  /** Store the matrices in this dtype (default f32; quantized right after each is drawn). */
  dtype?: MatrixDtype;
  /** Norm weights are 1 + N(0, normNoise) (default 0.02). */
  normNoise?: number;
}

/** sfc32 generator (fast, 128-bit state, good statistics), seeded via splitmix32. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const split = () => {
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = split();
    this.b = split();
    this.c = split();
    this.d = split();
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return (t >>> 0) / 4294967296;
  }

  /**
   * Fills `out` with N(mean, std) samples (Marsaglia's polar method, both outputs used). The generator
   * state lives in locals inside the loop: 110M samples take about a second.
   */
  fillNormal(out: Float32Array, std: number, mean = 0): Float32Array {
    let { a, b, c, d } = this;
    const n = out.length;
    for (let i = 0; i < n; i += 2) {
      let u: number;
      let v: number;
      let s: number;
      do {
        let t = (((a + b) | 0) + d) | 0;
        d = (d + 1) | 0;
        a = b ^ (b >>> 9);
        b = (c + (c << 3)) | 0;
        c = (c << 21) | (c >>> 11);
        c = (c + t) | 0;
        u = t * 4.656612873077393e-10; // int32 / 2^31, in [-1, 1)
        t = (((a + b) | 0) + d) | 0;
        d = (d + 1) | 0;
        a = b ^ (b >>> 9);
        b = (c + (c << 3)) | 0;
        c = (c << 21) | (c >>> 11);
        c = (c + t) | 0;
        v = t * 4.656612873077393e-10;
        s = u * u + v * v;
      } while (s >= 1 || s === 0);
      const f = std * Math.sqrt((-2 * Math.log(s)) / s);
      out[i] = mean + u * f;
      if (i + 1 < n) out[i + 1] = mean + v * f;
    }
    Object.assign(this, { a, b, c, d });
    return out;
  }
}

/** A uniform [0, 1) function of a seed (for tests and token sampling). */
export function uniformRng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.uniform();
}

/** Fills `out` with N(mean, std) samples drawn from `rand` (a uniform [0, 1) function, or an Rng). */
export function fillNormal(
  out: Float32Array,
  rand: (() => number) | Rng,
  std: number,
  mean = 0,
): Float32Array {
  if (rand instanceof Rng) return rand.fillNormal(out, std, mean);
  const n = out.length;
  for (let i = 0; i < n; i += 2) {
    let u: number;
    let v: number;
    let s: number;
    do {
      u = 2 * rand() - 1;
      v = 2 * rand() - 1;
      s = u * u + v * v;
    } while (s >= 1 || s === 0);
    const f = std * Math.sqrt((-2 * Math.log(s)) / s);
    out[i] = mean + u * f;
    if (i + 1 < n) out[i + 1] = mean + v * f;
  }
  return out;
}

export function randomLlama(config: LlamaConfig, seed: number, opts: RandomLlamaOptions = {}): LlamaModel {
  const std = opts.std ?? 0.02;
  const resStd = (opts.scaleResiduals ?? true) ? std / Math.sqrt(2 * config.nLayers) : std;
  const normNoise = opts.normNoise ?? 0.02;
  if (config.headDim === undefined && config.dim % config.nHeads !== 0)
    throw new Error(`dim ${config.dim} is not a multiple of nHeads ${config.nHeads}`);
  const rng = new Rng(seed);
  const shapes = tensorShapes(config);
  const size = (name: string) => shapes[name].reduce((a, b) => a * b, 1);
  const normal = (name: string, s: number) => rng.fillNormal(new Float32Array(size(name)), s);
  const norm = (name: string) => rng.fillNormal(new Float32Array(size(name)), normNoise, 1);

  // each matrix is converted as soon as it is drawn, so a large quantized model never exists in f32 at once
  const dtype = opts.dtype ?? 'f32';
  const mat = (name: string, s: number) =>
    convertMatrix(f32Matrix(normal(name, s), shapes[name][0], shapes[name][1]), dtype);

  const tokenEmbedding = mat('tokenEmbedding', std);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    layers.push({
      attnNorm: norm('attnNorm'),
      wq: mat('wq', std),
      wk: mat('wk', std),
      wv: mat('wv', std),
      wo: mat('wo', resStd),
      ffnNorm: norm('ffnNorm'),
      w1: mat('w1', std),
      w2: mat('w2', resStd),
      w3: mat('w3', std),
      // biases large enough to matter next to the projections (Qwen2's are O(1) too)
      ...(config.qkvBias ? { bq: normal('bq', 0.5), bk: normal('bk', 0.5), bv: normal('bv', 0.5) } : {}),
    });
  }
  const finalNorm = norm('finalNorm');
  const classifier = config.tiedEmbeddings ? tokenEmbedding : mat('classifier', std);
  return { config: { ...config }, weights: { tokenEmbedding, layers, finalNorm, classifier } };
}

/** A LlamaConfig with defaults for the fields tests rarely care about. */
export function llamaConfig(
  c: Partial<LlamaConfig> & Pick<LlamaConfig, 'dim' | 'nLayers' | 'nHeads' | 'vocabSize'>,
): LlamaConfig {
  return {
    hiddenDim: c.hiddenDim ?? 4 * c.dim,
    nKvHeads: c.nKvHeads ?? c.nHeads,
    maxSeqLen: c.maxSeqLen ?? 256,
    normEps: c.normEps ?? 1e-5,
    ropeTheta: c.ropeTheta ?? 10000,
    tiedEmbeddings: c.tiedEmbeddings ?? true,
    bosId: c.bosId ?? 1,
    eosId: c.eosId ?? 2,
    ...c,
  };
}
