/**
 * Random-weight Llama models of any shape, deterministic in a seed: real compute cost without real
 * weights (benchmarks at realistic shapes, `ppsd synth`), and small non-degenerate models for tests.
 */
import { type LayerWeights, type LlamaConfig, type LlamaModel, tensorShapes } from './llama';

export interface RandomLlamaOptions {
  /** Standard deviation of embeddings and linear weights (default 0.02, GPT-2/Llama init). */
  std?: number;
  /** Residual projections (wo, w2) use std / sqrt(2 * nLayers) (GPT-2's scaled init; default true). */
  scaleResiduals?: boolean;
  /** Norm weights are 1 + N(0, normNoise) (default 0.02). */
  normNoise?: number;
}

/** sfc32 uniform generator in [0, 1) (fast, 128-bit state, good statistics), seeded via splitmix32. */
export function uniformRng(seed: number): () => number {
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split();
  let b = split();
  let c = split();
  let d = split();
  return () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
}

/** Fills `out` with N(mean, std) samples (Box-Muller, both outputs used). */
export function fillNormal(out: Float32Array, rand: () => number, std: number, mean = 0): Float32Array {
  const n = out.length;
  for (let i = 0; i < n; i += 2) {
    const u = 1 - rand(); // (0, 1]
    const r = std * Math.sqrt(-2 * Math.log(u));
    const t = 2 * Math.PI * rand();
    out[i] = mean + r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = mean + r * Math.sin(t);
  }
  return out;
}

export function randomLlama(config: LlamaConfig, seed: number, opts: RandomLlamaOptions = {}): LlamaModel {
  const std = opts.std ?? 0.02;
  const resStd = (opts.scaleResiduals ?? true) ? std / Math.sqrt(2 * config.nLayers) : std;
  const normNoise = opts.normNoise ?? 0.02;
  if (config.dim % config.nHeads !== 0)
    throw new Error(`dim ${config.dim} is not a multiple of nHeads ${config.nHeads}`);
  const rand = uniformRng(seed);
  const shapes = tensorShapes(config);
  const size = (name: string) => shapes[name].reduce((a, b) => a * b, 1);
  const normal = (name: string, s: number) => fillNormal(new Float32Array(size(name)), rand, s);
  const norm = (name: string) => fillNormal(new Float32Array(size(name)), rand, normNoise, 1);

  const tokenEmbedding = normal('tokenEmbedding', std);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    layers.push({
      attnNorm: norm('attnNorm'),
      wq: normal('wq', std),
      wk: normal('wk', std),
      wv: normal('wv', std),
      wo: normal('wo', resStd),
      ffnNorm: norm('ffnNorm'),
      w1: normal('w1', std),
      w2: normal('w2', resStd),
      w3: normal('w3', std),
    });
  }
  const finalNorm = norm('finalNorm');
  const classifier = config.tiedEmbeddings ? tokenEmbedding : normal('classifier', std);
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
