/**
 * A tiny ONNX graph-builder DSL over the protobuf writer.
 *
 * Tensors are just names (strings). Each op method appends a node and returns its output name(s), so
 * model code reads like straight-line math: `g.add(x, g.matmul(a, b))`. Weights become initializers
 * whose bytes are referenced (not copied) until `toBytes()` serializes the model into one buffer.
 *
 * Field numbers follow onnx/onnx.proto (IR version 8, opset 17).
 */
import { Message } from './protobuf';

export type Tensor = string;
export type Dim = number | string; // fixed size, or a symbolic dimension name
export type ElemType = 'float32' | 'int64' | 'bool' | 'uint8' | 'float16' | 'bfloat16';

const DATA_TYPE: Record<ElemType, number> = {
  float32: 1,
  uint8: 2,
  int64: 7,
  bool: 9,
  float16: 10,
  bfloat16: 16,
};

export const IR_VERSION = 8;
export const OPSET = 17;
export const INT64_MAX = 9223372036854775807n;

/** Marks a float attribute (plain numbers are integer attributes). */
export class FloatAttr {
  constructor(readonly value: number) {}
}
export type AttrValue = number | bigint | number[] | string | FloatAttr;

interface NodeDef {
  op: string;
  domain?: string;
  inputs: Tensor[];
  outputs: Tensor[];
  attrs: Record<string, AttrValue>;
}

interface ValueDef {
  name: string;
  type: ElemType;
  dims: Dim[];
}

function attributeProto(name: string, v: AttrValue): Message {
  // AttributeProto: name=1 f=2 i=3 s=4 floats=7 ints=8 type=20 (FLOAT=1 INT=2 STRING=3 INTS=7)
  const a = new Message().string(1, name);
  if (v instanceof FloatAttr) return a.float(2, v.value).varint(20, 1);
  if (typeof v === 'string') return a.string(4, v).varint(20, 3);
  if (Array.isArray(v)) {
    for (const x of v) a.varint(8, x);
    return a.varint(20, 7);
  }
  return a.varint(3, v).varint(20, 2);
}

function valueInfoProto(v: ValueDef): Message {
  // ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2: {dim=1: {value=1|param=2}}}}}
  const shape = new Message();
  for (const d of v.dims) {
    shape.message(1, typeof d === 'number' ? new Message().varint(1, d) : new Message().string(2, d));
  }
  const tensorType = new Message().varint(1, DATA_TYPE[v.type]).message(2, shape);
  return new Message().string(1, v.name).message(2, new Message().message(1, tensorType));
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A model whose large initializers live outside its bytes (see GraphBuilder.toExternal). */
export interface ExternalModel {
  bytes: Uint8Array;
  /** InferenceSession option `externalData`: initializer bytes by the location the graph names. */
  externalData: { path: string; data: Uint8Array }[];
}

export class GraphBuilder {
  private readonly nodes: NodeDef[] = [];
  private readonly inputs: ValueDef[] = [];
  private readonly outputs: ValueDef[] = [];
  private readonly inits: { name: string; type: ElemType; dims: number[]; data: ArrayBufferView }[] = [];
  private readonly initByArray = new Map<ArrayBufferView, Tensor>();
  private readonly consts = new Map<string, Tensor>();
  /** Tensor name -> the node output slot that produces it (so graph outputs can be renamed in place). */
  private readonly producer = new Map<Tensor, { node: NodeDef; index: number }>();
  /** Old name -> new name of tensors renamed into graph outputs. */
  private readonly alias = new Map<Tensor, Tensor>();
  private counter = 0;
  private readonly domains = new Set<string>();

  constructor(readonly name: string) {}

  // ---- graph interface -------------------------------------------------------------------------

  input(name: string, type: ElemType, dims: Dim[]): Tensor {
    this.inputs.push({ name, type, dims });
    return name;
  }

  /** Exposes `t` as graph output `name` (renames its producer's output, or adds an Identity). */
  output(name: string, t: Tensor, type: ElemType, dims: Dim[]): void {
    t = this.alias.get(t) ?? t;
    const p = this.producer.get(t);
    if (p && !this.outputs.some((o) => o.name === t)) {
      p.node.outputs[p.index] = name;
      this.producer.delete(t);
      this.producer.set(name, p);
      this.alias.set(t, name); // later uses of the old name read the output
      for (const n of this.nodes) n.inputs = n.inputs.map((x) => (x === t ? name : x));
    } else {
      this.op('Identity', [t], {}, [name]);
    }
    this.outputs.push({ name, type, dims });
  }

  /** A weight initializer. The same array passed twice yields the same initializer (tied weights). */
  weight(name: string, data: Float32Array, dims: number[]): Tensor {
    const known = this.initByArray.get(data);
    if (known) return known;
    const n = dims.reduce((a, b) => a * b, 1);
    if (n !== data.length) throw new Error(`${name}: ${data.length} values for shape [${dims}]`);
    this.inits.push({ name, type: 'float32', dims, data });
    this.initByArray.set(data, name);
    return name;
  }

  /**
   * A raw initializer of any element type (quantized blocks as uint8, f16 weights as their bits in a
   * Uint16Array). The same array passed twice yields the same initializer.
   */
  initializer(name: string, type: ElemType, dims: number[], data: ArrayBufferView): Tensor {
    const known = this.initByArray.get(data);
    if (known) return known;
    this.inits.push({ name, type, dims, data });
    this.initByArray.set(data, name);
    return name;
  }

  /** A small int64 constant (deduplicated). */
  i64(values: number[] | bigint[], dims: number[] = [values.length]): Tensor {
    const key = `i64:${dims}:${values}`;
    const known = this.consts.get(key);
    if (known) return known;
    const name = `const_${this.consts.size}`;
    this.inits.push({
      name,
      type: 'int64',
      dims,
      data: BigInt64Array.from(values as (number | bigint)[], (v) => BigInt(v)),
    });
    this.consts.set(key, name);
    return name;
  }

  /** A float32 scalar constant (deduplicated). */
  f32(value: number): Tensor {
    return this.scalar('float32', value, Float32Array.of(value));
  }

  /** A uint8 scalar constant (deduplicated). */
  u8(value: number): Tensor {
    return this.scalar('uint8', value, Uint8Array.of(value));
  }

  private scalar(type: ElemType, value: number, data: ArrayBufferView): Tensor {
    const key = `${type}:${value}`;
    const known = this.consts.get(key);
    if (known) return known;
    const name = `const_${this.consts.size}`;
    this.inits.push({ name, type, dims: [], data });
    this.consts.set(key, name);
    return name;
  }

  /** Appends a node; returns its outputs (auto-named unless `outputs` is given). */
  op(
    op: string,
    inputs: Tensor[],
    attrs: Record<string, AttrValue> = {},
    outputs: number | Tensor[] = 1,
    domain?: string,
  ): Tensor[] {
    const outs =
      typeof outputs === 'number'
        ? Array.from({ length: outputs }, (_, i) => `${op.toLowerCase()}_${this.counter}${i ? `_${i}` : ''}`)
        : outputs;
    this.counter++;
    inputs = inputs.map((t) => this.alias.get(t) ?? t);
    const node: NodeDef = { op, domain, inputs, outputs: [...outs], attrs };
    if (domain) this.domains.add(domain);
    this.nodes.push(node);
    outs.forEach((t, index) => {
      this.producer.set(t, { node, index });
    });
    return outs;
  }

  private op1(op: string, inputs: Tensor[], attrs: Record<string, AttrValue> = {}): Tensor {
    return this.op(op, inputs, attrs)[0];
  }

  // ---- ops (ai.onnx, opset 17) --------------------------------------------------------------------

  add = (a: Tensor, b: Tensor): Tensor => this.op1('Add', [a, b]);
  sub = (a: Tensor, b: Tensor): Tensor => this.op1('Sub', [a, b]);
  mul = (a: Tensor, b: Tensor): Tensor => this.op1('Mul', [a, b]);
  div = (a: Tensor, b: Tensor): Tensor => this.op1('Div', [a, b]);
  neg = (a: Tensor): Tensor => this.op1('Neg', [a]);
  pow = (a: Tensor, b: Tensor): Tensor => this.op1('Pow', [a, b]);
  sqrt = (a: Tensor): Tensor => this.op1('Sqrt', [a]);
  sigmoid = (a: Tensor): Tensor => this.op1('Sigmoid', [a]);
  matmul = (a: Tensor, b: Tensor): Tensor => this.op1('MatMul', [a, b]);
  cast = (a: Tensor, to: ElemType): Tensor => this.op1('Cast', [a], { to: DATA_TYPE[to] });
  bitShift = (a: Tensor, b: Tensor, direction: 'LEFT' | 'RIGHT'): Tensor =>
    this.op1('BitShift', [a, b], { direction });
  softmax = (a: Tensor, axis: number): Tensor => this.op1('Softmax', [a], { axis });
  reduceMean = (a: Tensor, axes: number[]): Tensor => this.op1('ReduceMean', [a], { axes, keepdims: 1 });
  transpose = (a: Tensor, perm: number[]): Tensor => this.op1('Transpose', [a], { perm });
  reshape = (a: Tensor, shape: number[]): Tensor => this.op1('Reshape', [a, this.i64(shape)]);
  unsqueeze = (a: Tensor, axes: number[]): Tensor => this.op1('Unsqueeze', [a, this.i64(axes)]);
  squeeze = (a: Tensor, axes: number[]): Tensor => this.op1('Squeeze', [a, this.i64(axes)]);
  concat = (xs: Tensor[], axis: number): Tensor =>
    xs.length === 1 ? xs[0] : this.op1('Concat', xs, { axis });
  gather = (data: Tensor, indices: Tensor, axis = 0): Tensor => this.op1('Gather', [data, indices], { axis });
  shape = (a: Tensor, start: number, end: number): Tensor => this.op1('Shape', [a], { start, end });
  range = (start: Tensor, limit: Tensor, delta: Tensor): Tensor => this.op1('Range', [start, limit, delta]);
  lessOrEqual = (a: Tensor, b: Tensor): Tensor => this.op1('LessOrEqual', [a, b]);
  where = (cond: Tensor, a: Tensor, b: Tensor): Tensor => this.op1('Where', [cond, a, b]);
  expand = (a: Tensor, shape: Tensor): Tensor => this.op1('Expand', [a, shape]);
  tile = (a: Tensor, repeats: number[]): Tensor => this.op1('Tile', [a, this.i64(repeats)]);
  /**
   * com.microsoft FusedMatMul (CPU, CUDA): alpha * A' @ B' where, with transBatchB, B [d0, batch.., n] is read
   * as [batch.., d0, n] (then transB swaps the last two) through strides, without a copy.
   */
  fusedMatMul = (
    a: Tensor,
    b: Tensor,
    attrs: { alpha?: number; transB?: number; transBatchB?: number },
  ): Tensor => {
    const { alpha, ...ints } = attrs;
    const all: Record<string, AttrValue> = {
      ...ints,
      ...(alpha !== undefined ? { alpha: new FloatAttr(alpha) } : {}),
    };
    return this.op('FusedMatMul', [a, b], all, 1, 'com.microsoft')[0];
  };
  /** y = a @ b^T (+ c): `b` is a row-major [out, in] weight. */
  linear = (a: Tensor, b: Tensor, c?: Tensor): Tensor =>
    this.op1('Gemm', c ? [a, b, c] : [a, b], { transB: 1 });
  /** Split along `axis` into parts of the given sizes. */
  split = (a: Tensor, axis: number, sizes: number[]): Tensor[] =>
    this.op('Split', [a, this.i64(sizes)], { axis }, sizes.length);
  /**
   * com.microsoft RotaryEmbedding (CPU, CUDA, WebGPU), rotate_half layout: x [B, S, heads*hd] ->
   * the same shape, rotated by the rows `positions` [B, S] of cos/sin [maxSeq, hd/2].
   */
  rotaryEmbedding = (x: Tensor, positions: Tensor, cos: Tensor, sin: Tensor, numHeads: number): Tensor =>
    this.op(
      'RotaryEmbedding',
      [x, positions, cos, sin],
      { interleaved: 0, num_heads: numHeads },
      1,
      'com.microsoft',
    )[0];
  /** Slice with tensor starts/ends (may be computed at run time). */
  slice = (a: Tensor, starts: Tensor, ends: Tensor, axes: number[]): Tensor =>
    this.op1('Slice', [a, starts, ends, this.i64(axes)]);

  // ---- serialization ----------------------------------------------------------------------------

  /** Serializes ModelProto into one exactly-sized Uint8Array (weights copied once). */
  toBytes(producer = 'ppsd'): Uint8Array {
    return this.serialize(producer, Number.POSITIVE_INFINITY).bytes;
  }

  /**
   * Serializes the graph with every float initializer of at least `minBytes` bytes as ONNX external data
   * (one in-memory "file" per initializer, named `<initializer>.bin`): `bytes` holds only the graph, and
   * `externalData` the entries to pass as the session option of that name. Each entry's `data` is a view of
   * the weight array itself (no copy), so the model bytes stay small and ORT reads the weights straight
   * from the arrays the engine already holds.
   */
  toExternal(minBytes = 1024, producer = 'ppsd'): ExternalModel {
    return this.serialize(producer, minBytes);
  }

  private serialize(producer: string, minExternalBytes: number): ExternalModel {
    const externalData: ExternalModel['externalData'] = [];
    const graph = new Message();
    // GraphProto: node=1 name=2 initializer=5 input=11 output=12
    for (const n of this.nodes) {
      // NodeProto: input=1 output=2 name=3 op_type=4 attribute=5 domain=7
      const node = new Message();
      for (const i of n.inputs) node.string(1, i);
      for (const o of n.outputs) node.string(2, o);
      node.string(3, `${n.op}_${n.outputs[0]}`).string(4, n.op);
      if (n.domain) node.string(7, n.domain);
      for (const [k, v] of Object.entries(n.attrs)) node.message(5, attributeProto(k, v));
      graph.message(1, node);
    }
    graph.string(2, this.name);
    for (const t of this.inits) {
      // TensorProto: dims=1 data_type=2 name=8 raw_data=9
      const tp = new Message();
      for (const d of t.dims) tp.varint(1, d);
      tp.varint(2, DATA_TYPE[t.type]).string(8, t.name);
      const data = bytesOf(t.data);
      if (t.type !== 'int64' && t.type !== 'bool' && data.byteLength >= minExternalBytes) {
        // external_data=13 {key=1, value=2}, data_location=14 (EXTERNAL = 1)
        const path = `${t.name}.bin`;
        const kv = (k: string, v: string) => new Message().string(1, k).string(2, v);
        tp.message(13, kv('location', path))
          .message(13, kv('offset', '0'))
          .message(13, kv('length', String(data.byteLength)))
          .varint(14, 1);
        externalData.push({ path, data });
      } else {
        tp.bytes(9, data);
      }
      graph.message(5, tp);
    }
    for (const v of this.inputs) graph.message(11, valueInfoProto(v));
    for (const v of this.outputs) graph.message(12, valueInfoProto(v));
    // ModelProto: ir_version=1 producer_name=2 graph=7 opset_import=8 {domain=1, version=2}
    const model = new Message()
      .varint(1, IR_VERSION)
      .string(2, producer)
      .message(7, graph)
      .message(8, new Message().string(1, '').varint(2, OPSET));
    for (const d of this.domains) model.message(8, new Message().string(1, d).varint(2, 1));
    return { bytes: model.encode(), externalData };
  }
}
