/**
 * `Stage` on onnxruntime-node: one InferenceSession over the stage's ONNX graph plus its KV cache.
 *
 * Host-resident cache (CPU and CUDA EPs; the default): per forward of T rows only O(T) data crosses into
 * and out of ORT. Each layer's cached past goes in as a zero-copy view of its own buffer (`past_k.<j>`,
 * plus one scratch row, see KvCache.graphPast), and only the new rows' K/V come back (one block, copied
 * once into the cache). Truncation is O(1).
 *
 * Device-resident cache (`kvCache: 'device'`, meant for WebGPU): the graph returns each layer's whole
 * present K/V and the stage feeds those tensors back as the next past; on WebGPU they stay in GPU buffers
 * (`preferredOutputLocation: 'gpu-buffer'`), so only tokens/hidden in and logits/hidden out cross the bus.
 * Truncation is O(1) too: a smaller `past_len`, the graph drops the rows beyond it on device.
 * UNTESTED ON GPU HARDWARE (no WebGPU adapter where it was written); the same graph and bookkeeping are
 * tested on the CPU EP, where the fed-back tensors simply live in host memory.
 *
 * Works the same on the main thread and inside a worker_threads Worker.
 */
import { type InferenceSession, Tensor } from 'onnxruntime-node';
import {
  buildStageModel,
  IO,
  layerIO,
  type StageGraphOptions,
  validateStageSpec,
} from '../graph/llama-graph';
import type { ExternalModel } from '../graph/onnx';
import { consistentRows } from '../graph/weights';
import { headDim, type LlamaConfig, type LlamaModel, stageMatrices } from '../model/llama';
import {
  forwardInChunks,
  type Stage,
  type StageInput,
  type StageOutput,
  type StageSpec,
} from '../model/stage';
import { createSession, type Device, type SessionConfig } from './device';
import { KvCache } from './kv-cache';

export type KvCacheMode = NonNullable<StageGraphOptions['kvCache']>;

export interface OrtStageOptions extends SessionConfig {
  /** Longest context (cache rows and rotary-table rows); default config.maxSeqLen. */
  maxSeqLen?: number;
  /** Attention formulation (see StageGraphOptions); default 'standard' on WebGPU, else 'fused'. */
  attention?: StageGraphOptions['attention'];
  /**
   * Where the KV cache lives (see StageGraphOptions.kvCache); default 'device' on WebGPU, else 'host'.
   * createOrtStageFromGraph reads the mode from the graph itself (a `past_len` input means 'device').
   */
  kvCache?: KvCacheMode;
  /** MatMulNBits accuracy_level for q8/q4 matrices (see StageGraphOptions). */
  accuracyLevel?: StageGraphOptions['accuracyLevel'];
}

/** What a session needs besides the graph bytes (small enough to post to a Worker). */
export interface StageGraphInfo {
  config: LlamaConfig;
  spec: StageSpec;
  /** Must equal the maxSeqLen the graph was built with (default config.maxSeqLen). */
  maxSeqLen?: number;
  /** See Stage.consistentRows (graph/weights.ts consistentRows). */
  consistentRows?: number;
}

/** The graph options a device gets by default: WebGPU has no FusedMatMul and keeps the cache on device. */
export function defaultGraphOptions(
  device: Device | undefined,
): Required<Omit<StageGraphOptions, 'maxSeqLen' | 'accuracyLevel' | 'lanes'>> {
  return device === 'webgpu'
    ? { attention: 'standard', kvCache: 'device' }
    : { attention: 'fused', kvCache: 'host' };
}

/** The stage's cache in graph tensors that are fed back run after run (device-resident mode). */
class DeviceKv {
  private k: Tensor[];
  private v: Tensor[];
  private len = 0;
  constructor(
    readonly nLayers: number,
    readonly kvH: number,
    readonly hd: number,
  ) {
    // one zero row to start with (past_len 0 drops it in the graph): no zero-sized tensors anywhere
    this.k = Array.from(
      { length: nLayers },
      () => new Tensor('float32', new Float32Array(kvH * hd), [kvH, hd, 1]),
    );
    this.v = Array.from(
      { length: nLayers },
      () => new Tensor('float32', new Float32Array(kvH * hd), [kvH, 1, hd]),
    );
  }
  get length(): number {
    return this.len;
  }
  feed(feeds: Record<string, Tensor>): void {
    feeds[IO.pastLen] = new Tensor('int64', BigInt64Array.of(BigInt(this.len)), [1]);
    for (let j = 0; j < this.nLayers; j++) {
      feeds[layerIO(IO.pastK, j)] = this.k[j];
      feeds[layerIO(IO.pastV, j)] = this.v[j];
    }
  }
  /** Adopts the run's present tensors as the new past (and frees the old ones, on the device too). */
  adopt(res: InferenceSession.OnnxValueMapType, rows: number): void {
    for (let j = 0; j < this.nLayers; j++) {
      const k = res[layerIO(IO.presentK, j)] as Tensor;
      const v = res[layerIO(IO.presentV, j)] as Tensor;
      if (this.k[j] !== k) this.k[j].dispose();
      if (this.v[j] !== v) this.v[j].dispose();
      this.k[j] = k;
      this.v[j] = v;
    }
    this.len += rows;
  }
  truncate(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.len)
      throw new Error(`truncate(${n}) outside [0, ${this.len}]`);
    this.len = n;
  }
  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}

/** The most rows one session run takes (longer blocks run in chunks of this size). */
export const MAX_BLOCK_ROWS = 128;

export class OrtStage implements Stage {
  private readonly hostKv?: KvCache;
  private readonly deviceKv?: DeviceKv;
  private readonly first: boolean;
  private readonly last: boolean;
  private readonly hasLogitRows: boolean;
  private readonly maxSeqLen: number;
  private busy = false;

  constructor(
    readonly spec: StageSpec,
    private readonly config: LlamaConfig,
    private session: InferenceSession | undefined,
    /** The device the session actually runs on (cpu after a fallback). */
    readonly device: Device,
    maxSeqLen: number,
    /** Where the cache lives; must match the graph ('device' graphs have a `past_len` input). */
    readonly kvCache: KvCacheMode = 'host',
    readonly consistentRows?: number,
  ) {
    this.first = spec.firstLayer === 0;
    this.last = spec.endLayer === config.nLayers;
    this.hasLogitRows = this.last || !!spec.exit;
    this.maxSeqLen = maxSeqLen;
    const L = spec.endLayer - spec.firstLayer;
    if (kvCache === 'device') this.deviceKv = new DeviceKv(L, config.nKvHeads, headDim(config));
    else this.hostKv = new KvCache(maxSeqLen, L, config.nKvHeads, headDim(config));
  }

  /** The host-resident cache (throws for a device-resident stage, whose cache lives in ORT tensors). */
  get cache(): KvCache {
    if (!this.hostKv) throw new Error('this stage keeps its KV cache on the device (kvCache: device)');
    return this.hostKv;
  }

  get length(): number {
    return this.hostKv ? this.hostKv.length : this.deviceKv!.length;
  }

  /**
   * Blocks longer than MAX_BLOCK_ROWS (a long prompt) run as consecutive chunks: the same computation
   * row for row in every decoder and stage split, with a quarter of the activation memory of a 512-row
   * block and no loss of speed (measured, docs/BENCHMARKS.md).
   */
  forward(input: StageInput): Promise<StageOutput> {
    const T = input.tokens?.length ?? (input.hidden?.length ?? 0) / this.config.dim;
    return forwardInChunks((i) => this.forwardBlock(i), input, T, MAX_BLOCK_ROWS);
  }

  private async forwardBlock(input: StageInput): Promise<StageOutput> {
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
    const P = this.length;
    if (this.hostKv) this.hostKv.checkRoom(T);
    else if (P + T > this.maxSeqLen) {
      throw new Error(
        `context overflow: ${P} cached + ${T} new positions > maxSeqLen ${this.maxSeqLen} ` +
          '(truncate the cache or raise maxSeqLen)',
      );
    }
    const R = input.logitRows ?? T;
    if (!Number.isInteger(R) || R < 1 || R > T)
      throw new Error(`${name}: logitRows ${R} must lie in [1, ${T}]`);

    const positions = new BigInt64Array(T);
    for (let i = 0; i < T; i++) positions[i] = BigInt(P + i);
    feeds[IO.positions] = new Tensor('int64', positions, [T]);
    if (this.hostKv) {
      const past = this.hostKv.graphPast();
      const dims = this.hostKv.graphPastDims;
      for (let j = 0; j < past.k.length; j++) {
        feeds[layerIO(IO.pastK, j)] = new Tensor('float32', past.k[j], dims);
        feeds[layerIO(IO.pastV, j)] = new Tensor('float32', past.v[j], dims);
      }
    } else {
      this.deviceKv!.feed(feeds);
    }
    if (this.hasLogitRows) feeds[IO.logitRows] = new Tensor('int64', BigInt64Array.of(BigInt(R)), [1]);

    this.busy = true;
    let res: InferenceSession.OnnxValueMapType;
    try {
      res = await session.run(feeds);
    } finally {
      this.busy = false;
    }
    const f32 = (n: string) => res[n].data as Float32Array;
    if (this.hostKv) this.hostKv.append(f32(IO.newK), f32(IO.newV), T);
    else this.deviceKv!.adopt(res, T);
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
    if (this.hostKv) this.hostKv.truncate(length);
    else this.deviceKv!.truncate(length);
  }

  async release(): Promise<void> {
    const s = this.session;
    this.session = undefined;
    this.deviceKv?.dispose();
    await s?.release();
  }
}

/** The graph's present K/V output names (device-resident cache), kept on the GPU under WebGPU. */
export function presentOutputNames(spec: StageSpec): string[] {
  const names: string[] = [];
  for (let j = 0; j < spec.endLayer - spec.firstLayer; j++)
    names.push(layerIO(IO.presentK, j), layerIO(IO.presentV, j));
  return names;
}

/**
 * A stage from prebuilt graph bytes (e.g. built on the main thread, posted to a Worker). The cache mode is
 * read from the graph (a `past_len` input means a device-resident cache); `opts.kvCache`, when given, must
 * agree. The stage keeps no reference to `graph`: once the caller drops it, the bytes can be collected.
 */
export async function createOrtStageFromGraph(
  graph: Uint8Array | ExternalModel,
  info: StageGraphInfo,
  opts: OrtStageOptions = {},
): Promise<OrtStage> {
  validateStageSpec(info.spec, info.config.nLayers);
  const maxSeqLen = opts.maxSeqLen ?? info.maxSeqLen ?? info.config.maxSeqLen;
  const cfg: SessionConfig = { ...opts };
  // On WebGPU the present K/V of a device-cache graph stay in GPU buffers. Only when the caller says the
  // graph is one: the locations name outputs that a host-cache graph does not have.
  if (opts.device === 'webgpu' && opts.kvCache === 'device') {
    cfg.preferredOutputLocation = Object.fromEntries(
      presentOutputNames(info.spec).map((n) => [n, 'gpu-buffer' as const]),
    );
  }
  const { session, device } = await createSession(graph, cfg);
  const mode: KvCacheMode = session.inputNames.includes(IO.pastLen) ? 'device' : 'host';
  if (opts.kvCache && opts.kvCache !== mode) {
    await session.release();
    throw new Error(`kvCache '${opts.kvCache}' requested, but the graph has a ${mode}-resident cache`);
  }
  return new OrtStage(info.spec, info.config, session, device, maxSeqLen, mode, info.consistentRows);
}

/** Builds the stage's graph and opens an ORT session for it (nothing of the graph is kept afterwards). */
export async function createOrtStage(
  model: LlamaModel,
  spec: StageSpec,
  opts: OrtStageOptions = {},
): Promise<OrtStage> {
  const maxSeqLen = opts.maxSeqLen ?? model.config.maxSeqLen;
  const d = defaultGraphOptions(opts.device);
  const kvCache = opts.kvCache ?? d.kvCache;
  const attention = opts.attention ?? d.attention;
  // weights as external data viewing the model's own arrays: ORT copies them in once, and the graph
  // bytes themselves are small (peak memory: model + ORT's copy, without a serialized model besides)
  const graph = buildStageModel(model, spec, {
    maxSeqLen,
    attention,
    kvCache,
    accuracyLevel: opts.accuracyLevel,
  });
  const rows = consistentRows(stageMatrices(model, spec), opts.accuracyLevel);
  return createOrtStageFromGraph(
    graph,
    { config: model.config, spec, maxSeqLen, consistentRows: rows },
    { ...opts, kvCache },
  );
}
