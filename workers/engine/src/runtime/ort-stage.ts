/**
 * `Stage` on onnxruntime-node: one InferenceSession over the stage's ONNX graph plus its KV cache.
 * Per forward of T rows only O(T) data crosses into and out of ORT: the cached past goes in as a
 * zero-copy view of the cache prefix (plus one scratch row, see KvCache.graphPast), and only the new rows' K/V come back (copied once into the cache).
 * Works the same on the main thread and inside a worker_threads Worker.
 */
import { type InferenceSession, Tensor } from 'onnxruntime-node';
import { buildStageGraph, IO, type StageGraphOptions, validateStageSpec } from '../graph/llama-graph';
import { headDim, type LlamaConfig, type LlamaModel } from '../model/llama';
import type { Stage, StageInput, StageOutput, StageSpec } from '../model/stage';
import { createSession, type Device, type SessionConfig } from './device';
import { KvCache } from './kv-cache';

export interface OrtStageOptions extends SessionConfig {
  /** Longest context (cache rows and rotary-table rows); default config.maxSeqLen. */
  maxSeqLen?: number;
  /** Attention formulation (see StageGraphOptions); default 'standard' on WebGPU, else 'fused'. */
  attention?: StageGraphOptions['attention'];
}

/** What a session needs besides the graph bytes (small enough to post to a Worker). */
export interface StageGraphInfo {
  config: LlamaConfig;
  spec: StageSpec;
  /** Must equal the maxSeqLen the graph was built with (default config.maxSeqLen). */
  maxSeqLen?: number;
}

export class OrtStage implements Stage {
  readonly cache: KvCache;
  private readonly first: boolean;
  private readonly last: boolean;
  private readonly hasLogitRows: boolean;
  private busy = false;

  constructor(
    readonly spec: StageSpec,
    private readonly config: LlamaConfig,
    private session: InferenceSession | undefined,
    /** The device the session actually runs on (cpu after a fallback). */
    readonly device: Device,
    maxSeqLen: number,
  ) {
    this.first = spec.firstLayer === 0;
    this.last = spec.endLayer === config.nLayers;
    this.hasLogitRows = this.last || !!spec.exit;
    this.cache = new KvCache(maxSeqLen, spec.endLayer - spec.firstLayer, config.nKvHeads, headDim(config));
  }

  get length(): number {
    return this.cache.length;
  }

  async forward(input: StageInput): Promise<StageOutput> {
    const session = this.session;
    if (!session) throw new Error('stage used after release()');
    if (this.busy) throw new Error('stage forward already in progress (one forward at a time per stage)');
    const c = this.config;
    const name = `stage [${this.spec.firstLayer}, ${this.spec.endLayer})`;
    const feeds: Record<string, Tensor> = {};
    let T: number;
    if (this.first) {
      const tokens = input.tokens;
      if (!tokens) throw new Error(`${name} is the first stage: it needs tokens`);
      T = tokens.length;
      const ids = new BigInt64Array(T);
      for (let i = 0; i < T; i++) {
        const t = tokens[i];
        if (t < 0 || t >= c.vocabSize)
          throw new Error(`${name}: token ${t} outside the vocabulary [0, ${c.vocabSize})`);
        ids[i] = BigInt(t);
      }
      feeds[IO.tokens] = new Tensor('int64', ids, [T]);
    } else {
      const hidden = input.hidden;
      if (!hidden) throw new Error(`${name} needs the previous stage's hidden states`);
      T = hidden.length / c.dim;
      if (!Number.isInteger(T))
        throw new Error(`${name}: hidden has ${hidden.length} values, not a multiple of dim ${c.dim}`);
      feeds[IO.hiddenIn] = new Tensor('float32', hidden, [T, c.dim]);
    }
    if (T < 1) throw new Error(`${name}: forward needs at least one row`);
    this.cache.checkRoom(T);
    const R = input.logitRows ?? T;
    if (!Number.isInteger(R) || R < 1 || R > T)
      throw new Error(`${name}: logitRows ${R} must lie in [1, ${T}]`);

    const P = this.cache.length;
    const positions = new BigInt64Array(T);
    for (let i = 0; i < T; i++) positions[i] = BigInt(P + i);
    feeds[IO.positions] = new Tensor('int64', positions, [T]);
    const past = this.cache.graphPast();
    feeds[IO.pastK] = new Tensor('float32', past.k, this.cache.graphPastDims);
    feeds[IO.pastV] = new Tensor('float32', past.v, this.cache.graphPastDims);
    if (this.hasLogitRows) feeds[IO.logitRows] = new Tensor('int64', BigInt64Array.of(BigInt(R)), [1]);

    this.busy = true;
    let res: InferenceSession.OnnxValueMapType;
    try {
      res = await session.run(feeds);
    } finally {
      this.busy = false;
    }
    const f32 = (n: string) => res[n].data as Float32Array;
    this.cache.append(f32(IO.newK), f32(IO.newV), T);
    const out: StageOutput = { rows: T };
    if (this.last) out.logits = f32(IO.logits);
    else out.hidden = f32(IO.hidden);
    if (this.spec.exit) {
      out.exitLogits = f32(IO.exitLogits);
      out.exitHidden = f32(IO.exitHidden);
    }
    return out;
  }

  truncate(length: number): void {
    this.cache.truncate(length);
  }

  async release(): Promise<void> {
    const s = this.session;
    this.session = undefined;
    await s?.release();
  }
}

/** A stage from prebuilt graph bytes (e.g. built on the main thread, posted to a Worker). */
export async function createOrtStageFromGraph(
  graph: Uint8Array,
  info: StageGraphInfo,
  opts: OrtStageOptions = {},
): Promise<OrtStage> {
  validateStageSpec(info.spec, info.config.nLayers);
  const maxSeqLen = opts.maxSeqLen ?? info.maxSeqLen ?? info.config.maxSeqLen;
  const { session, device } = await createSession(graph, opts);
  return new OrtStage(info.spec, info.config, session, device, maxSeqLen);
}

/** Builds the stage's graph and opens an ORT session for it. */
export async function createOrtStage(
  model: LlamaModel,
  spec: StageSpec,
  opts: OrtStageOptions = {},
): Promise<OrtStage> {
  const maxSeqLen = opts.maxSeqLen ?? model.config.maxSeqLen;
  const attention = opts.attention ?? (opts.device === 'webgpu' ? 'standard' : 'fused');
  const graph = buildStageGraph(model, spec, { maxSeqLen, attention });
  return createOrtStageFromGraph(graph, { config: model.config, spec, maxSeqLen }, opts);
}
