/**
 * A minimal protobuf *writer*: enough wire format for ONNX's ModelProto.
 *
 * Messages are built as a tree of fields that only *reference* their payloads (weights stay in the
 * caller's Float32Arrays). `size()` is computed once per message bottom-up and cached, then `encode()`
 * writes the whole tree into one preallocated buffer: every byte is copied exactly once, so a 440 MB
 * model costs one 440 MB allocation and one pass.
 *
 * Repeated scalars are written unpacked (one tag per element), which every protobuf parser accepts.
 */

const WIRE_VARINT = 0;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

const utf8 = new TextEncoder();
const U64 = (1n << 64n) - 1n;

type Part =
  | { field: number; wire: typeof WIRE_VARINT; value: number | bigint }
  | { field: number; wire: typeof WIRE_FIXED32; value: number }
  | { field: number; wire: typeof WIRE_LEN; data: Uint8Array }
  | { field: number; wire: typeof WIRE_LEN; msg: Message };

function varintSize(v: number | bigint): number {
  if (typeof v === 'number') {
    if (v >= 0 && Number.isSafeInteger(v)) {
      let n = 1;
      while (v >= 128) {
        v = Math.floor(v / 128);
        n++;
      }
      return n;
    }
    v = BigInt(v);
  }
  let u = v & U64; // two's complement for negative int64
  let n = 1;
  while (u >= 128n) {
    u >>= 7n;
    n++;
  }
  return n;
}

function writeVarint(buf: Uint8Array, pos: number, v: number | bigint): number {
  if (typeof v === 'number' && v >= 0 && Number.isSafeInteger(v)) {
    while (v >= 128) {
      buf[pos++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    buf[pos++] = v;
    return pos;
  }
  let u = BigInt(v) & U64;
  while (u >= 128n) {
    buf[pos++] = Number(u & 0x7fn) | 0x80;
    u >>= 7n;
  }
  buf[pos++] = Number(u);
  return pos;
}

const tagSize = (field: number, wire: number): number => varintSize(field * 8 + wire);

export class Message {
  private readonly parts: Part[] = [];
  private cached = -1;

  /** int32 / int64 / enum / bool field. Negative values are written as 10-byte two's complement. */
  varint(field: number, value: number | bigint): this {
    this.parts.push({ field, wire: WIRE_VARINT, value });
    return this;
  }

  float(field: number, value: number): this {
    this.parts.push({ field, wire: WIRE_FIXED32, value });
    return this;
  }

  /** bytes field; `data` is referenced, not copied, until `encode()`. */
  bytes(field: number, data: Uint8Array): this {
    this.parts.push({ field, wire: WIRE_LEN, data });
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, utf8.encode(s));
  }

  message(field: number, msg: Message): this {
    this.parts.push({ field, wire: WIRE_LEN, msg });
    return this;
  }

  /** Encoded size in bytes (cached: do not add fields after calling it). */
  size(): number {
    if (this.cached >= 0) return this.cached;
    let n = 0;
    for (const p of this.parts) {
      n += tagSize(p.field, p.wire);
      if (p.wire === WIRE_VARINT) n += varintSize(p.value);
      else if (p.wire === WIRE_FIXED32) n += 4;
      else {
        const len = 'msg' in p ? p.msg.size() : p.data.byteLength;
        n += varintSize(len) + len;
      }
    }
    this.cached = n;
    return n;
  }

  /** Writes the message (without its own tag/length) at `pos`; returns the end position. */
  writeTo(buf: Uint8Array, pos: number, view: DataView): number {
    for (const p of this.parts) {
      pos = writeVarint(buf, pos, p.field * 8 + p.wire);
      if (p.wire === WIRE_VARINT) pos = writeVarint(buf, pos, p.value);
      else if (p.wire === WIRE_FIXED32) {
        view.setFloat32(pos, p.value, true);
        pos += 4;
      } else if ('msg' in p) {
        pos = writeVarint(buf, pos, p.msg.size());
        pos = p.msg.writeTo(buf, pos, view);
      } else {
        pos = writeVarint(buf, pos, p.data.byteLength);
        buf.set(p.data, pos);
        pos += p.data.byteLength;
      }
    }
    return pos;
  }

  /** Serializes into one exactly-sized buffer. */
  encode(): Uint8Array {
    const buf = new Uint8Array(this.size());
    const end = this.writeTo(buf, 0, new DataView(buf.buffer));
    if (end !== buf.byteLength) throw new Error(`protobuf: wrote ${end} bytes, expected ${buf.byteLength}`);
    return buf;
  }
}
