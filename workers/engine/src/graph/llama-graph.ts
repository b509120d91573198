/**
 * The ONNX graph of one pipeline stage of a Llama model: layers [firstLayer, endLayer); activations f32,
 * matrices in the package's dtypes (graph/weights.ts).
 *
 * Graph interface, host-resident cache (default; T new rows, P cached positions, R logit rows,
 * L = endLayer - firstLayer, j = 0..L-1 the stage-local layer index):
 *   inputs   tokens     int64 [T]              first stage only
 *            hidden_in  float [T, dim]         other stages
 *            positions  int64 [T]              absolute positions P .. P+T-1 (RoPE rows, causal mask)
 *            past_k.<j> float [P+1, kvH, hd]   layer j's cache prefix, position-major (a zero-copy view of
 *            past_v.<j> float [P+1, kvH, hd]   the layer's own buffer), plus one scratch row (row P, masked
 *                                              out: it keeps every dim > 0)
 *            logit_rows int64 [1]              R: logits only for the last R rows (last stage / exit head)
 *   outputs  hidden      float [T, dim]        not the last stage
 *            logits      float [R, vocab]      last stage
 *            exit_logits float [R, vocab]      with an exit head
 *            exit_hidden float [T, dim]        with an exit head: raw hidden state after `afterLayer` layers
 *            new_k       float [T, L, kvH, hd] K/V of the new rows, appended to the cache by the runtime
 *            new_v       float [T, L, kvH, hd] (zeros for layers whose attention is skipped)
 * With 'fused' attention nothing reads the past except the two attention FusedMatMuls per layer (strided,
 * no copy), so per-token cost grows with P only through attention itself.
 *
 * Batched (`lanes: n`, host cache): the T rows are the new rows of up to n sequences, packed in lane
 * order; every matrix multiply runs over all T rows at once, attention
 * runs per lane over that lane's own past, exactly as the single-sequence graph would.
 *   inputs   lane_bounds  int64 [2n]             (start, end) of each lane's rows; the used lanes come first
 *                                              and tile [0, T); an unused lane gets (0, 1) and a 1-row past
 *            lane_rows    int64 [n+1]           how q/k/v, padded with n zero rows, split into the lanes: the
 *                                              used lanes' T_i, 1 (a zero row) per unused lane, then the
 *                                              pad rows left over (an unused lane's output is cut)
 *            past_k.<j>.<i> float [P_i+1, kvH, hd] lane i's cache view (as past_k.<j> above)
 *            past_v.<j>.<i> float [P_i+1, kvH, hd]
 *            logit_index  int64 [R]              the rows that get logits (any rows, any order)
 *   (tokens/hidden_in, positions = each row's own absolute position, outputs as above; no logit_rows)
 *
 * Device-resident cache (`kvCache: 'device'`, for the WebGPU EP with outputs kept on the GPU; standard
 * ops only): the cache lives in the graph's own tensors, fed back run after run.
 *   inputs   past_len     int64 [1]             P: rows of the past tensors that are valid (truncation = a
 *                                              smaller P; rows beyond it are dropped on device)
 *            past_k.<j>   float [kvH, hd, Pc]   K transposed (Pc >= P), so scores need no transpose
 *            past_v.<j>   float [kvH, Pc, hd]
 *   outputs  present_k.<j> float [kvH, hd, P+T] past rows [0, P) then the new rows
 *            present_v.<j> float [kvH, P+T, hd]
 *   (tokens/hidden_in, positions, logit_rows, hidden/logits/exit_* as above; no new_k/new_v)
 */
import { type ExitHead, headDim, type LayerWeights, type LlamaModel, type MatrixKey } from '../model/llama';
import type { Matrix } from '../model/matrix';
import type { StageSpec } from '../model/stage';
import { type ExternalModel, GraphBuilder, INT64_MAX, type Tensor } from './onnx';
import { type RopeTables, ropeTables } from './rope';
import {
  type AccuracyLevel,
  embedRows,
  type MatrixGraphOptions,
  matmulWeight,
  matmulWeights,
} from './weights';

export interface StageGraphOptions {
  /** Rows of the rotary tables = longest context the stage accepts (default config.maxSeqLen). */
  maxSeqLen?: number;
  /**
   * 'fused' (default): attention reads the past through com.microsoft FusedMatMul (CPU and CUDA EPs), one
   * copy of the past per layer. 'standard': ai.onnx ops only (for EPs without FusedMatMul, e.g. WebGPU).
   */
  attention?: 'fused' | 'standard';
  /**
   * 'host' (default): the runtime owns the cache; past K/V come in as views, only the new rows go out.
   * 'device': the cache is graph tensors fed back run after run (past_len, past_* -> present_*), for EPs
   * that keep outputs on the device (WebGPU); implies standard-op attention.
   */
  kvCache?: 'host' | 'device';
  /** MatMulNBits accuracy_level for q8/q4 matrices (default DEFAULT_ACCURACY_LEVEL). */
  accuracyLevel?: AccuracyLevel;
  /**
   * A batched graph over up to `lanes` sequences (host cache, fused attention only): the new rows of
   * all sequences are packed into one [T, dim] block, so every matrix is read once per step for all of
   * them, while attention runs per lane over that sequence's own past (see the batched interface above).
   */
  lanes?: number;
}

/** Names of the graph's inputs and outputs (the runtime feeds and reads these). */
export const IO = {
  tokens: 'tokens',
  hiddenIn: 'hidden_in',
  hidden: 'hidden',
  positions: 'positions',
  pastK: 'past_k',
  pastV: 'past_v',
  pastLen: 'past_len',
  presentK: 'present_k',
  presentV: 'present_v',
  logitRows: 'logit_rows',
  laneBounds: 'lane_bounds',
  laneRows: 'lane_rows',
  logitIndex: 'logit_index',
  logits: 'logits',
  exitLogits: 'exit_logits',
  exitHidden: 'exit_hidden',
  newK: 'new_k',
  newV: 'new_v',
} as const;

/** Per-layer input/output name: `past_k.<j>` etc. (j = stage-local layer index). */
export const layerIO = (base: string, j: number): string => `${base}.${j}`;

/** Per-layer, per-lane input name of a batched graph: `past_k.<j>.<i>`. */
export const laneIO = (base: string, j: number, i: number): string => `${base}.${j}.${i}`;

/** Throws unless `spec` is a valid stage of a model with `nLayers` layers. */
export function validateStageSpec(spec: StageSpec, nLayers: number): void {
  const { firstLayer: a, endLayer: b } = spec;
  if (!Number.isInteger(a) || !Number.isInteger(b) || a < 0 || b > nLayers || a >= b) {
    throw new Error(`invalid stage layers [${a}, ${b}) for a ${nLayers}-layer model`);
  }
  const e = spec.exit?.afterLayer;
  if (e !== undefined && (!Number.isInteger(e) || e < a || e > b)) {
    throw new Error(`exit after layer ${e} lies outside the stage's layers [${a}, ${b})`);
  }
}

/** Per-graph values every layer uses. */
interface Ctx {
  g: GraphBuilder;
  model: LlamaModel;
  nH: number; // query heads
  kvH: number; // key/value heads
  hd: number; // head size
  cos: Tensor; // [T, 1, hd] rotary rows of the new positions
  sin: Tensor; // [T, 1, hd]
  mask: Tensor; // [T, S] 0 where a query may see a key, -1e9 elsewhere (S = P + 1 + T keys)
  groupMask: Tensor; // [grp*T, S] the mask repeated for each query head of a kv head
  pastRows: Tensor; // [1] P + 1 (cached positions and the scratch row)
  attention: 'fused' | 'standard' | 'device';
  pastK: Tensor[]; // per layer: [P+1, kvH, hd] (host cache) or [kvH, hd, P] (device cache)
  pastV: Tensor[]; // per layer: [P+1, kvH, hd] (host cache) or [kvH, P, hd] (device cache)
  matmul: MatrixGraphOptions; // how quantized matrices compute
  /** com.microsoft RotaryEmbedding inputs (contrib-op graphs): positions [1, T], cos/sin [maxSeq, hd/2]. */
  rotary?: { positions: Tensor; cos: Tensor; sin: Tensor; axis: 0 | 1 };
  /** Batched graphs: each lane's rows and past; attention runs once per lane. */
  lanes?: Lanes;
  /** [1] T, the packed rows of all lanes. */
  rows?: Tensor;
}

/** What attention reads of one sequence: its past per layer and the mask of its rows over its keys. */
interface AttentionPast {
  pastK: Tensor[]; // per layer [P+1, kvH, hd]
  pastV: Tensor[];
  groupMask: Tensor; // [grp*T, S]
  pastRows: Tensor; // [1] P + 1
}

/** One sequence of a batched graph: its rows [start, end) of the packed block, and its past. */
interface Lane extends AttentionPast {
  start: Tensor; // [1]
  end: Tensor; // [1]
  /** [2] (P + 1, T_i): how its attention weights split into past and new keys. */
  keySplit: Tensor;
}

/** A batched graph's lanes, and how the packed rows split into them. */
interface Lanes {
  lanes: Lane[];
  /** [n+1] the sizes of the per-layer Splits of the padded rows (lane_rows). */
  rows: Tensor;
  /** Zero rows, one per lane: [kvH, grp, n, hd] for q, [n, kvH, hd] for k and v. */
  qPad: Tensor;
  kvPad: Tensor;
}

/** RMSNorm, in the Pow/ReduceMean/Add/Sqrt/Div/Mul form ORT fuses into SimplifiedLayerNormalization. */
function rmsnorm(s: Ctx, x: Tensor, w: Float32Array, name: string): Tensor {
  const { g } = s;
  const ms = g.reduceMean(g.pow(x, g.f32(2)), [-1]); // [rows, 1]
  const inv = g.div(x, g.sqrt(g.add(ms, g.f32(s.model.config.normEps)))); // [rows, dim]
  return g.mul(inv, g.weight(name, w, [w.length]));
}

/** HF rotate_half RoPE: x*cos + [-x2, x1]*sin, x: [T, heads, hd]. */
function rope(s: Ctx, x: Tensor): Tensor {
  const { g, hd } = s;
  const x1 = g.slice(x, g.i64([0]), g.i64([hd / 2]), [-1]); // [T, heads, hd/2]
  const x2 = g.slice(x, g.i64([hd / 2]), g.i64([hd]), [-1]); // [T, heads, hd/2]
  const rotated = g.concat([g.neg(x2), x1], -1); // [T, heads, hd]
  return g.add(g.mul(x, s.cos), g.mul(rotated, s.sin));
}

/**
 * Attention with standard ops only (any EP): concatenates the cached and new K/V and transposes them to
 * head-major, i.e. copies this layer's whole past three times per call.
 * q [T, nH, hd], k/v [T, kvH, hd] -> [T, nH*hd]; query head h uses kv head floor(h / grp).
 */
function attendStandard(s: Ctx, j: number, q: Tensor, k: Tensor, v: Tensor): Tensor {
  const { g, nH, kvH, hd } = s;
  const keys = g.concat([s.pastK[j], k], 0); // [S, kvH, hd] past, scratch, new
  const vals = g.concat([s.pastV[j], v], 0); // [S, kvH, hd]
  const qh = g.reshape(g.transpose(q, [1, 0, 2]), [kvH, nH / kvH, -1, hd]); // [kvH, grp, T, hd]
  const kt = g.unsqueeze(g.transpose(keys, [1, 2, 0]), [1]); // [kvH, 1, hd, S]
  const vh = g.unsqueeze(g.transpose(vals, [1, 0, 2]), [1]); // [kvH, 1, S, hd]
  const scores = g.add(g.matmul(g.mul(qh, g.f32(1 / Math.sqrt(hd))), kt), s.mask); // [kvH, grp, T, S]
  const att = g.matmul(g.softmax(scores, -1), vh); // [kvH, grp, T, hd]
  return g.reshape(g.transpose(att, [2, 0, 1, 3]), [-1, nH * hd]); // [T, nH*hd]
}

/**
 * The same attention without copying the past at all: FusedMatMul reads the layer's cache view
 * K/V [P+1, kvH, hd] as [kvH, P+1, hd] through strides (transBatchB), and the past and the new rows are
 * scored separately, so only the scores/softmax ([nH*T, S] values) and the two matmuls scale with P.
 */
function attendFused(s: Ctx, j: number, q: Tensor, k: Tensor, v: Tensor): Tensor {
  const { g, nH, kvH, hd } = s;
  const kPast = s.pastK[j]; // [P+1, kvH, hd]
  const vPast = s.pastV[j]; // [P+1, kvH, hd]
  const qh = g.reshape(g.transpose(q, [1, 0, 2]), [kvH, -1, hd]); // [kvH, grp*T, hd]
  const scale = 1 / Math.sqrt(hd);
  const sPast = g.fusedMatMul(qh, kPast, { alpha: scale, transB: 1, transBatchB: 1 }); // [kvH, grp*T, P+1]
  const sNew = g.fusedMatMul(qh, k, { alpha: scale, transB: 1, transBatchB: 1 }); // [kvH, grp*T, T]
  const att = g.softmax(g.add(g.concat([sPast, sNew], -1), s.groupMask), -1); // [kvH, grp*T, S]
  const aPast = g.slice(att, g.i64([0]), s.pastRows, [-1]); // [kvH, grp*T, P+1]
  const aNew = g.slice(att, s.pastRows, g.i64([INT64_MAX]), [-1]); // [kvH, grp*T, T]
  const out = g.add(
    g.fusedMatMul(aPast, vPast, { transBatchB: 1 }),
    g.fusedMatMul(aNew, v, { transBatchB: 1 }),
  ); // [kvH, grp*T, hd]
  return g.reshape(g.transpose(g.reshape(out, [nH, -1, hd]), [1, 0, 2]), [-1, nH * hd]); // [T, nH*hd]
}

/**
 * Batched attention: each lane attends over its own past with its own rows, exactly as attendFused does
 * for one sequence. The head-major layout of q and of the output is made once for all lanes (one
 * transpose each), and q, k, v split into the lanes' rows once per layer, padded with a zero row for
 * each unused lane (no tensor is ever empty), so a lane costs only the four attention matmuls, its
 * softmax and the split of its weights into past and new keys. The lane outputs, in lane order, are the
 * packed rows (the unused lanes' come last and are cut).
 * q [T, nH, hd], k/v [T, kvH, hd] -> [T, nH*hd].
 */
function attendLanes(s: Ctx, j: number, q: Tensor, k: Tensor, v: Tensor): Tensor {
  const { g, nH, kvH, hd } = s;
  const { lanes, rows, qPad, kvPad } = s.lanes!;
  const n = lanes.length;
  const grp = nH / kvH;
  const scale = 1 / Math.sqrt(hd);
  const qAll = g.reshape(g.transpose(q, [1, 0, 2]), [kvH, grp, -1, hd]); // [kvH, grp, T, hd]
  const split = (x: Tensor, zeros: Tensor, axis: number) =>
    g.op('Split', [g.concat([x, zeros], axis), rows], { axis }, n + 1).slice(0, n);
  const qs = split(qAll, qPad, 2); // per lane [kvH, grp, T_i, hd]
  const ks = split(k, kvPad, 0); // per lane [T_i, kvH, hd]
  const vs = split(v, kvPad, 0); // per lane [T_i, kvH, hd]
  const outs = lanes.map((lane, i) => {
    const qh = g.reshape(qs[i], [kvH, -1, hd]); // [kvH, grp*T_i, hd]
    const sPast = g.fusedMatMul(qh, lane.pastK[j], { alpha: scale, transB: 1, transBatchB: 1 }); // [kvH, grp*T_i, P+1]
    const sNew = g.fusedMatMul(qh, ks[i], { alpha: scale, transB: 1, transBatchB: 1 }); // [kvH, grp*T_i, T_i]
    const att = g.softmax(g.add(g.concat([sPast, sNew], -1), lane.groupMask), -1); // [kvH, grp*T_i, S_i]
    const [aPast, aNew] = g.op('Split', [att, lane.keySplit], { axis: -1 }, 2);
    const out = g.add(
      g.fusedMatMul(aPast, lane.pastV[j], { transBatchB: 1 }),
      g.fusedMatMul(aNew, vs[i], { transBatchB: 1 }),
    ); // [kvH, grp*T_i, hd]
    return g.reshape(out, [kvH, grp, -1, hd]); // [kvH, grp, T_i, hd]
  });
  const all = g.slice(g.concat(outs, 2), g.i64([0]), s.rows!, [2]); // [kvH, grp, T, hd]
  return g.reshape(g.transpose(all, [2, 0, 1, 3]), [-1, nH * hd]); // [T, nH*hd]
}

/**
 * Attention over a device-resident cache (standard ops): K is kept transposed [kvH, hd, P] and V as
 * [kvH, P, hd], so the present tensors are one Concat each (a device-side copy of the past, which is the
 * price of a functional graph) and the matmuls read them as they are.
 * Returns the attention output [T, nH*hd] and this layer's present K/V (the graph outputs).
 */
function attendDevice(s: Ctx, j: number, q: Tensor, k: Tensor, v: Tensor) {
  const { g, nH, kvH, hd } = s;
  const presentK = g.concat([s.pastK[j], g.transpose(k, [1, 2, 0])], 2); // [kvH, hd, S]
  const presentV = g.concat([s.pastV[j], g.transpose(v, [1, 0, 2])], 1); // [kvH, S, hd]
  const qh = g.reshape(g.transpose(q, [1, 0, 2]), [kvH, -1, hd]); // [kvH, grp*T, hd]
  const scores = g.add(g.matmul(g.mul(qh, g.f32(1 / Math.sqrt(hd))), presentK), s.groupMask); // [kvH, grp*T, S]
  const out = g.matmul(g.softmax(scores, -1), presentV); // [kvH, grp*T, hd]
  const o = g.reshape(g.transpose(g.reshape(out, [nH, -1, hd]), [1, 0, 2]), [-1, nH * hd]); // [T, nH*hd]
  return { o, presentK, presentV };
}

/**
 * One transformer layer (global index `l`, index `j` inside the stage), like llama2.c's forward():
 * x [T, dim] -> x [T, dim], plus this layer's K/V for the new rows [T, kvH, hd] (undefined if skipped).
 */
function layer(s: Ctx, l: number, j: number, x: Tensor, skipAttn: boolean, skipMlp: boolean) {
  const { g, nH, kvH, hd } = s;
  const w: LayerWeights = s.model.weights.layers[l];
  // y = x W^T for the layer's matrix `key`, in whatever dtype the package stores it
  const W = (x: Tensor, key: MatrixKey) => matmulWeight(g, x, w[key], `l${l}.${key}`, s.matmul);
  let k: Tensor | undefined;
  let v: Tensor | undefined;
  let present: { k: Tensor; v: Tensor } | undefined;

  if (!skipAttn) {
    // attention rmsnorm, then q, k, v for the new rows (one projection when the storage allows)
    const xb = rmsnorm(s, x, w.attnNorm, `l${l}.attnNorm`); // [T, dim]
    let [q2, k2, v2] = matmulWeights(g, xb, w, ['wq', 'wk', 'wv'], `l${l}.wqkv`, s.matmul);
    if (w.bq && w.bk && w.bv) {
      // Qwen2's projection biases, added before RoPE as in its attention
      q2 = g.add(q2, g.weight(`l${l}.bq`, w.bq, [w.bq.length])); // [T, nH*hd]
      k2 = g.add(k2, g.weight(`l${l}.bk`, w.bk, [w.bk.length])); // [T, kvH*hd]
      v2 = g.add(v2, g.weight(`l${l}.bv`, w.bv, [w.bv.length])); // [T, kvH*hd]
    }
    v = g.reshape(v2, [-1, kvH, hd]); // [T, kvH, hd]
    // RoPE relative positional encoding
    let q: Tensor;
    if (s.rotary) {
      // q and k rotate alike per head: one contrib op over both ([T, (nH + kvH) * hd])
      const qk = g.rotaryEmbedding(
        g.unsqueeze(g.concat([q2, k2], -1), [s.rotary.axis]),
        s.rotary.positions,
        s.rotary.cos,
        s.rotary.sin,
        nH + kvH,
      );
      [q, k] = g.split(g.reshape(qk, [-1, nH + kvH, hd]), 1, [nH, kvH]); // [T, nH, hd], [T, kvH, hd]
    } else {
      q = rope(s, g.reshape(q2, [-1, nH, hd])); // [T, nH, hd]
      k = rope(s, g.reshape(k2, [-1, kvH, hd])); // [T, kvH, hd]
    }
    // multi-head (grouped-query) attention over the cached prefix and the new rows
    let o: Tensor; // [T, nH*hd]
    if (s.attention === 'device') {
      const r = attendDevice(s, j, q, k, v);
      o = r.o;
      present = { k: r.presentK, v: r.presentV };
    } else {
      o = s.lanes
        ? attendLanes(s, j, q, k, v)
        : s.attention === 'fused'
          ? attendFused(s, j, q, k, v)
          : attendStandard(s, j, q, k, v);
    }
    // output projection and residual
    x = g.add(x, W(o, 'wo')); // [T, dim]
  }

  if (!skipMlp) {
    // ffn rmsnorm, then SwiGLU: w2(silu(w1 x) * w3 x)
    const xb = rmsnorm(s, x, w.ffnNorm, `l${l}.ffnNorm`); // [T, dim]
    // gate and up stay two matmuls: stacking them measured no faster (N = 2 x 2048 per call) and its Split
    // costs a copy (q/k/v, three N = 768 projections, do gain from one call)
    const gate = W(xb, 'w1'); // [T, hidden]
    const up = W(xb, 'w3'); // [T, hidden]
    const h = g.mul(g.mul(gate, g.sigmoid(gate)), up); // [T, hidden]
    x = g.add(x, W(h, 'w2')); // [T, dim]
  }
  return { x, k, v, present };
}

/**
 * Final norm + classifier on R rows of x [T, dim] (after an optional affine map) -> [R, vocab]: the last
 * R rows (`logit_rows` [1]), or in a batched graph the rows `logit_index` [R] names.
 */
function head(s: Ctx, x: Tensor, logitRows: Tensor, affine?: ExitHead['affine'], rows?: Matrix): Tensor {
  const { g, model } = s;
  const { dim } = model.config;
  let h = s.lanes ? g.gather(x, logitRows) : g.slice(x, g.neg(logitRows), g.i64([INT64_MAX]), [0]); // [R, dim]
  if (affine) {
    const w = g.weight('exit.weight', affine.weight, [dim, dim]);
    h = g.linear(h, w, g.weight('exit.bias', affine.bias, [dim])); // [R, dim] = W h + b
  }
  h = rmsnorm(s, h, model.weights.finalNorm, 'finalNorm'); // [R, dim]
  // an exit head over a vocabulary subset brings its own gathered classifier rows (f32)
  if (rows) return matmulWeight(g, h, rows, 'exit.classifier', s.matmul); // [R, |subset|]
  const tied = model.weights.classifier === model.weights.tokenEmbedding;
  return matmulWeight(g, h, model.weights.classifier, tied ? 'tokenEmbedding' : 'classifier', s.matmul); // [R, vocab]
}

/** The half-width rotary tables (columns i and i + hd/2 share a frequency) for the contrib op. */
/**
 * The contrib op takes rows as [1, T] (one sequence) or, in a batched graph, [T, 1]: its sequence
 * axis may not exceed the table's rows, and a packed batch can hold more rows than that.
 */
function rotaryInputs(
  g: GraphBuilder,
  tables: RopeTables,
  maxSeq: number,
  hd: number,
  positions: Tensor,
  axis: 0 | 1,
) {
  const half = (t: Float64Array) => {
    const out = new Float32Array(maxSeq * (hd / 2));
    for (let p = 0; p < maxSeq; p++) for (let i = 0; i < hd / 2; i++) out[p * (hd / 2) + i] = t[p * hd + i];
    return out;
  };
  return {
    axis,
    positions: g.unsqueeze(positions, [axis]), // [1, T] or [T, 1]
    cos: g.weight('rope.cos_half', half(tables.cos), [maxSeq, hd / 2]),
    sin: g.weight('rope.sin_half', half(tables.sin), [maxSeq, hd / 2]),
  };
}

/**
 * The causal mask of rows at `positions` [T] over their keys, S = cached positions, then (host cache) the
 * scratch row that is never visible, then the new rows. `pastLen` (device cache) or the past view
 * [P+1, kvH, hd] (host cache) gives P. Returns the mask [T, S] and pastRows [1] (P, or P + 1 with scratch).
 */
function pastMask(g: GraphBuilder, pastLen: Tensor | undefined, pastK: Tensor, positions: Tensor) {
  const pastRows = pastLen ?? g.shape(pastK, 0, 1); // [1] P (device) or P + 1 (host)
  const nCached = pastLen ? g.squeeze(pastLen, [0]) : g.sub(g.squeeze(pastRows, [0]), g.i64([1], []));
  const cached = g.range(g.i64([0], []), nCached, g.i64([1], [])); // [P]
  const keyPos = g.concat(pastLen ? [cached, positions] : [cached, g.i64([2 ** 40]), positions], 0); // [S]
  const visible = g.lessOrEqual(g.unsqueeze(keyPos, [0]), g.unsqueeze(positions, [1])); // [T, S]
  return { mask: g.where(visible, g.f32(0), g.f32(-1e9)), pastRows }; // [T, S], [1]
}

/** A batched graph's per-lane inputs (lane_bounds, past_k.<j>.<i>, past_v.<j>.<i>) and masks. */
function laneInputs(
  g: GraphBuilder,
  n: number,
  L: number,
  grp: number,
  kvH: number,
  hd: number,
  positions: Tensor,
) {
  const bounds = g.input(IO.laneBounds, 'int64', [2 * n]);
  const rows = g.input(IO.laneRows, 'int64', [n + 1]);
  const lanes = Array.from({ length: n }, (_, i): Lane => {
    const pastK: Tensor[] = [];
    const pastV: Tensor[] = [];
    for (let j = 0; j < L; j++) {
      pastK.push(g.input(laneIO(IO.pastK, j, i), 'float32', [`P${i}+1`, kvH, hd]));
      pastV.push(g.input(laneIO(IO.pastV, j, i), 'float32', [`P${i}+1`, kvH, hd]));
    }
    const start = g.slice(bounds, g.i64([2 * i]), g.i64([2 * i + 1]), [0]); // [1]
    const end = g.slice(bounds, g.i64([2 * i + 1]), g.i64([2 * i + 2]), [0]); // [1]
    const { mask, pastRows } = pastMask(g, undefined, pastK[0], g.slice(positions, start, end, [0]));
    const keySplit = g.concat([pastRows, g.slice(rows, g.i64([i]), g.i64([i + 1]), [0])], 0); // [2]
    return { start, end, pastK, pastV, pastRows, keySplit, groupMask: g.tile(mask, [grp, 1]) };
  });
  const zeros = (name: string, dims: number[]) =>
    g.initializer(name, 'float32', dims, new Float32Array(dims.reduce((a, b) => a * b, 1)));
  return {
    lanes,
    rows,
    qPad: zeros('lanes.q_pad', [kvH, grp, n, hd]),
    kvPad: zeros('lanes.kv_pad', [n, kvH, hd]),
  };
}

/** Builds the stage's ONNX model (weights inline as initializers) as one Uint8Array. */
export function buildStageGraph(
  model: LlamaModel,
  spec: StageSpec,
  opts: StageGraphOptions = {},
): Uint8Array {
  return stageGraph(model, spec, opts).toBytes();
}

/**
 * The same model with its weights as external data that points at the model's own arrays (no copy):
 * pass `externalData` as the session option of that name. The session then reads the weights from the
 * JS arrays, so neither a serialized copy of the weights nor (without prepacking) ORT's own copy exists.
 * The arrays must stay alive and unchanged while the session lives.
 */
export function buildStageModel(
  model: LlamaModel,
  spec: StageSpec,
  opts: StageGraphOptions = {},
): ExternalModel {
  return stageGraph(model, spec, opts).toExternal();
}

function stageGraph(model: LlamaModel, spec: StageSpec, opts: StageGraphOptions): GraphBuilder {
  const c = model.config;
  validateStageSpec(spec, c.nLayers);
  if (new Uint8Array(Uint16Array.of(1).buffer)[0] !== 1)
    throw new Error('ONNX raw_data needs a little-endian host');
  const { firstLayer, endLayer, exit, skip } = spec;
  const first = firstLayer === 0;
  const last = endLayer === c.nLayers;
  const L = endLayer - firstLayer;
  const hd = headDim(c);
  const maxSeq = opts.maxSeqLen ?? c.maxSeqLen;
  if (c.nHeads % c.nKvHeads !== 0)
    throw new Error(`nHeads ${c.nHeads} is not a multiple of nKvHeads ${c.nKvHeads}`);

  const device = opts.kvCache === 'device';
  const kvH = c.nKvHeads;
  const nLanes = opts.lanes;
  if (nLanes !== undefined) {
    if (!Number.isInteger(nLanes) || nLanes < 1)
      throw new Error(`lanes must be a positive integer, got ${nLanes}`);
    if (device || (opts.attention ?? 'fused') !== 'fused')
      throw new Error('a batched graph needs the host cache and fused attention');
  }

  const g = new GraphBuilder(`llama_stage_${firstLayer}_${endLayer}`);
  // ---- inputs
  const tokens = first ? g.input(IO.tokens, 'int64', ['T']) : undefined;
  const input = first ? undefined : g.input(IO.hiddenIn, 'float32', ['T', c.dim]);
  const positions = g.input(IO.positions, 'int64', ['T']);
  const pastLen = device ? g.input(IO.pastLen, 'int64', [1]) : undefined;
  const pastK: Tensor[] = [];
  const pastV: Tensor[] = [];
  for (let j = 0; nLanes === undefined && j < L; j++) {
    if (device) {
      // the fed-back present tensors may hold more rows than P (after a truncation): keep [0, P)
      const k = g.input(layerIO(IO.pastK, j), 'float32', [kvH, hd, 'Pc']);
      const v = g.input(layerIO(IO.pastV, j), 'float32', [kvH, 'Pc', hd]);
      pastK.push(g.slice(k, g.i64([0]), pastLen!, [2]));
      pastV.push(g.slice(v, g.i64([0]), pastLen!, [1]));
    } else {
      pastK.push(g.input(layerIO(IO.pastK, j), 'float32', ['P+1', kvH, hd]));
      pastV.push(g.input(layerIO(IO.pastV, j), 'float32', ['P+1', kvH, hd]));
    }
  }
  const wantLogits = last || !!exit;
  const logitRows = !wantLogits
    ? undefined
    : nLanes === undefined
      ? g.input(IO.logitRows, 'int64', [1])
      : g.input(IO.logitIndex, 'int64', ['R']);
  const lanes =
    nLanes === undefined ? undefined : laneInputs(g, nLanes, L, c.nHeads / kvH, kvH, hd, positions);

  // ---- rotary rows of the new positions, and the causal mask over the S keys:
  // host cache: S = P + 1 + T keys (cached positions 0..P-1, the scratch row (never visible), the new rows);
  // device cache: S = P + T keys (cached positions 0..P-1, the new rows)
  const tables = ropeTables(c, maxSeq);
  const cosT = g.weight('rope.cos', Float32Array.from(tables.cos), [maxSeq, hd]);
  const sinT = g.weight('rope.sin', Float32Array.from(tables.sin), [maxSeq, hd]);
  const past = lanes ? undefined : pastMask(g, device ? pastLen! : undefined, pastK[0], positions);
  const attention = device ? 'device' : (opts.attention ?? 'fused');
  const ctx: Ctx = {
    g,
    model,
    nH: c.nHeads,
    kvH,
    hd,
    cos: g.unsqueeze(g.gather(cosT, positions), [1]), // [T, 1, hd]
    sin: g.unsqueeze(g.gather(sinT, positions), [1]), // [T, 1, hd]
    mask: past?.mask ?? g.f32(0),
    groupMask: past ? g.tile(past.mask, [c.nHeads / kvH, 1]) : g.f32(0), // [grp*T, S]
    pastRows: past?.pastRows ?? g.f32(0),
    attention,
    pastK,
    pastV,
    matmul: { accuracyLevel: opts.accuracyLevel },
    rotary: attention === 'fused' ? rotaryInputs(g, tables, maxSeq, hd, positions, lanes ? 1 : 0) : undefined,
    lanes,
    rows: g.shape(positions, 0, 1),
  };

  // ---- the layers
  let x = tokens ? embedRows(g, model.weights.tokenEmbedding, tokens, 'tokenEmbedding') : input!; // [T, dim]
  const newK: Tensor[] = [];
  const newV: Tensor[] = [];
  let zeros: Tensor | undefined; // [T, 1, kvH, hd] for skipped attention
  const T = () => g.shape(positions, 0, 1); // [1]
  const exitAt = (n: number) => {
    if (exit?.afterLayer !== n) return;
    g.output(IO.exitHidden, x, 'float32', ['T', c.dim]);
    const rows = exit.classifierRows;
    const width = rows ? rows.rows : c.vocabSize;
    g.output(IO.exitLogits, head(ctx, x, logitRows!, exit.affine, rows), 'float32', ['R', width]);
  };
  exitAt(firstLayer);
  for (let l = firstLayer; l < endLayer; l++) {
    const j = l - firstLayer;
    const r = layer(ctx, l, j, x, !!skip?.attention.includes(l), !!skip?.mlp.includes(l));
    x = r.x;
    if (device) {
      // skipped attention: the present still grows by T (zero) rows, so every layer keeps P + T rows
      const pk =
        r.present?.k ?? g.concat([pastK[j], g.expand(g.f32(0), g.concat([g.i64([kvH, hd]), T()], 0))], 2);
      const pv =
        r.present?.v ??
        g.concat([pastV[j], g.expand(g.f32(0), g.concat([g.i64([kvH]), T(), g.i64([hd])], 0))], 1);
      g.output(layerIO(IO.presentK, j), pk, 'float32', [kvH, hd, 'S']);
      g.output(layerIO(IO.presentV, j), pv, 'float32', [kvH, 'S', hd]);
    } else if (r.k && r.v) {
      newK.push(g.unsqueeze(r.k, [1])); // [T, 1, kvH, hd]
      newV.push(g.unsqueeze(r.v, [1]));
    } else {
      zeros ??= g.expand(g.f32(0), g.concat([T(), g.i64([1, kvH, hd])], 0));
      newK.push(zeros);
      newV.push(zeros);
    }
    exitAt(l + 1);
  }

  // ---- outputs
  if (last) g.output(IO.logits, head(ctx, x, logitRows!), 'float32', ['R', c.vocabSize]);
  else g.output(IO.hidden, x, 'float32', ['T', c.dim]);
  if (!device) {
    g.output(IO.newK, g.concat(newK, 1), 'float32', ['T', L, kvH, hd]);
    g.output(IO.newV, g.concat(newV, 1), 'float32', ['T', L, kvH, hd]);
  }
  return g;
}
