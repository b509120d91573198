/**
 * GGUF, ggml's model container (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), versions 2
 * and 3, little-endian only:
 *
 *   "GGUF", uint32 version, int64 tensor count, int64 metadata count,
 *   metadata: string key, int32 value type, value (arrays: int32 item type, uint64 count, items),
 *   tensor infos: string name, uint32 n_dims, int64 ne[n_dims] (ne[0] innermost: a matrix is
 *     [columns, rows]), int32 ggml type, uint64 offset into the data section,
 *   padding to `general.alignment` (uint32, default 32), then the data section: every tensor at an
 *   aligned offset.
 *   Strings are a uint64 byte length and UTF-8 bytes without a terminator; bools are one byte.
 *
 * Reading parses the header from the first bytes of the file (re-reading a larger prefix when the
 * header is bigger) and then reads tensors one at a time, so a model is never held twice. Writing
 * streams tensors to a temporary file (each produced only when it is due), renames it into place when
 * complete, and returns its size and sha256.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { endianness } from 'node:os';
import { readInto, writeFileHashed } from './file-io';
import type { ProgressFn } from './progress';

export class GgufError extends Error {
  override name = 'GgufError';
}

export const GGUF_DEFAULT_ALIGNMENT = 32;
const MAGIC = Buffer.from('GGUF', 'latin1');
const MAX_DIMS = 4; // GGML_MAX_DIMS
const MAX_NAME_BYTES = 63; // GGML_MAX_NAME is 64 including the terminator

// ---- ggml tensor types --------------------------------------------------------------------------------

export interface GgmlTypeInfo {
  id: number;
  name: string;
  blockSize: number; // elements per block (1 for plain types)
  typeSize: number; // bytes per block
}

/** Every type ggml defines (ggml.h / gguf-py constants.py), with its block layout. */
const TYPE_TABLE: [number, string, number, number][] = [
  [0, 'F32', 1, 4],
  [1, 'F16', 1, 2],
  [2, 'Q4_0', 32, 18],
  [3, 'Q4_1', 32, 20],
  [6, 'Q5_0', 32, 22],
  [7, 'Q5_1', 32, 24],
  [8, 'Q8_0', 32, 34],
  [9, 'Q8_1', 32, 36],
  [10, 'Q2_K', 256, 84],
  [11, 'Q3_K', 256, 110],
  [12, 'Q4_K', 256, 144],
  [13, 'Q5_K', 256, 176],
  [14, 'Q6_K', 256, 210],
  [15, 'Q8_K', 256, 292],
  [16, 'IQ2_XXS', 256, 66],
  [17, 'IQ2_XS', 256, 74],
  [18, 'IQ3_XXS', 256, 98],
  [19, 'IQ1_S', 256, 50],
  [20, 'IQ4_NL', 32, 18],
  [21, 'IQ3_S', 256, 110],
  [22, 'IQ2_S', 256, 82],
  [23, 'IQ4_XS', 256, 136],
  [24, 'I8', 1, 1],
  [25, 'I16', 1, 2],
  [26, 'I32', 1, 4],
  [27, 'I64', 1, 8],
  [28, 'F64', 1, 8],
  [29, 'IQ1_M', 256, 56],
  [30, 'BF16', 1, 2],
  [34, 'TQ1_0', 256, 54],
  [35, 'TQ2_0', 256, 66],
  [39, 'MXFP4', 32, 17],
  [40, 'NVFP4', 64, 36],
  [41, 'Q1_0', 128, 18],
  [42, 'Q2_0', 64, 18],
];
/** Ids ggml once used and has since removed (files with them no longer load anywhere). */
const REMOVED_TYPES: Record<number, string> = {
  4: 'Q4_2',
  5: 'Q4_3',
  31: 'Q4_0_4_4',
  32: 'Q4_0_4_8',
  33: 'Q4_0_8_8',
  36: 'IQ4_NL_4_4',
  37: 'IQ4_NL_4_8',
  38: 'IQ4_NL_8_8',
};

export const GGML_TYPES: ReadonlyMap<number, GgmlTypeInfo> = new Map(
  TYPE_TABLE.map(([id, name, blockSize, typeSize]) => [id, { id, name, blockSize, typeSize }]),
);

/** The ids of the types the engine converts (gguf-tensors.ts). */
export const GGML_TYPE = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q8_0: 8,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  BF16: 30,
} as const;

export function ggmlTypeName(id: number): string {
  return GGML_TYPES.get(id)?.name ?? (id in REMOVED_TYPES ? `${REMOVED_TYPES[id]} (removed)` : `#${id}`);
}

/** Bytes of a tensor of `type` with dims `ne` (ne[0] innermost); throws when the shape cannot hold it. */
export function ggmlTensorBytes(type: number, ne: readonly number[], what = 'tensor'): number {
  const info = GGML_TYPES.get(type);
  if (!info) {
    const removed = REMOVED_TYPES[type];
    throw new GgufError(
      removed
        ? `${what} has ggml type ${type} (${removed}), which ggml has removed; re-convert the model`
        : `${what} has unknown ggml type ${type}`,
    );
  }
  const rowElements = ne.length > 0 ? ne[0] : 1;
  if (rowElements % info.blockSize !== 0) {
    throw new GgufError(
      `${what} (${info.name}) has ${rowElements} elements per row, not a multiple of the block size ${info.blockSize}`,
    );
  }
  const elements = ne.reduce((a, b) => a * b, 1);
  const bytes = (elements / info.blockSize) * info.typeSize;
  if (!Number.isSafeInteger(bytes)) throw new GgufError(`${what} is too large (${elements} elements)`);
  return bytes;
}

// ---- metadata values ----------------------------------------------------------------------------------

export type GgufNumberType = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64';
export type GgufValueType = GgufNumberType | 'u64' | 'i64' | 'bool' | 'string' | 'array';

export type GgufValue =
  | { type: GgufNumberType; value: number }
  | { type: 'u64' | 'i64'; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | GgufArray;

/** An array's items: a typed array for numbers, plain arrays for bools, strings and nested arrays. */
export type GgufArrayItems =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[]
  | GgufArray[];

export interface GgufArray {
  type: 'array';
  itemType: GgufValueType;
  value: GgufArrayItems;
}

const TYPE_IDS: Record<GgufValueType, number> = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
};
const TYPE_BY_ID = Object.fromEntries(Object.entries(TYPE_IDS).map(([k, v]) => [v, k])) as Record<
  number,
  GgufValueType
>;
const NUMBER_ARRAYS = {
  u8: Uint8Array,
  i8: Int8Array,
  u16: Uint16Array,
  i16: Int16Array,
  u32: Uint32Array,
  i32: Int32Array,
  f32: Float32Array,
  f64: Float64Array,
  u64: BigUint64Array,
  i64: BigInt64Array,
} as const;
type TypedItemType = keyof typeof NUMBER_ARRAYS;
const isTypedItemType = (t: GgufValueType): t is TypedItemType => t in NUMBER_ARRAYS;
/** Smallest encoding of one item, to reject absurd counts before allocating. */
const MIN_ITEM_BYTES: Record<GgufValueType, number> = {
  u8: 1,
  i8: 1,
  u16: 2,
  i16: 2,
  u32: 4,
  i32: 4,
  f32: 4,
  bool: 1,
  string: 8,
  array: 12,
  u64: 8,
  i64: 8,
  f64: 8,
};

/** Value constructors: `gguf.u32(32)`, `gguf.strings(tokens)`, ... */
export const gguf = {
  u8: (value: number): GgufValue => ({ type: 'u8', value }),
  i8: (value: number): GgufValue => ({ type: 'i8', value }),
  u16: (value: number): GgufValue => ({ type: 'u16', value }),
  i16: (value: number): GgufValue => ({ type: 'i16', value }),
  u32: (value: number): GgufValue => ({ type: 'u32', value }),
  i32: (value: number): GgufValue => ({ type: 'i32', value }),
  f32: (value: number): GgufValue => ({ type: 'f32', value }),
  f64: (value: number): GgufValue => ({ type: 'f64', value }),
  u64: (value: bigint | number): GgufValue => ({ type: 'u64', value: BigInt(value) }),
  i64: (value: bigint | number): GgufValue => ({ type: 'i64', value: BigInt(value) }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  string: (value: string): GgufValue => ({ type: 'string', value }),
  array: (itemType: GgufValueType, value: GgufArrayItems): GgufArray => ({ type: 'array', itemType, value }),
  strings: (value: string[]): GgufArray => ({ type: 'array', itemType: 'string', value }),
};

// ---- header -------------------------------------------------------------------------------------------

export interface GgufTensorInfo {
  name: string;
  /** ne[0] (innermost, the row length) first, as GGUF stores them. */
  dims: number[];
  type: number;
  typeName: string;
  /** Byte offset within the data section. */
  offset: number;
  byteLength: number;
}

export interface GgufHeader {
  path: string;
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute file offset of the data section. */
  dataOffset: number;
  fileBytes: number;
}

function assertLittleEndianHost(): void {
  if (endianness() !== 'LE') throw new GgufError('GGUF: big-endian hosts are not supported');
}

export async function readGgufHeader(path: string): Promise<GgufHeader> {
  const file = await GgufFile.open(path);
  await file.close();
  return file.header;
}

/** An open GGUF file: its header, and its tensors read one at a time. */
export class GgufFile {
  private readonly byName: Map<string, GgufTensorInfo>;

  private constructor(
    private readonly fh: FileHandle,
    readonly header: GgufHeader,
  ) {
    this.byName = new Map(header.tensors.map((t) => [t.name, t]));
  }

  static async open(path: string): Promise<GgufFile> {
    assertLittleEndianHost();
    const fh = await open(path, 'r');
    try {
      return new GgufFile(fh, await parseHeaderFromFile(fh, path));
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  get path(): string {
    return this.header.path;
  }

  find(name: string): GgufTensorInfo | undefined {
    return this.byName.get(name);
  }

  tensor(name: string): GgufTensorInfo {
    const t = this.byName.get(name);
    if (!t) throw new GgufError(`${this.path}: has no tensor '${name}'`);
    return t;
  }

  /** The tensor's bytes in a fresh buffer of their own (offset 0, so typed views need no copy). */
  async readTensor(t: GgufTensorInfo | string): Promise<Uint8Array> {
    const info = typeof t === 'string' ? this.tensor(t) : t;
    const out = new Uint8Array(info.byteLength);
    await this.readTensorInto(info, out);
    return out;
  }

  async readTensorInto(info: GgufTensorInfo, target: Uint8Array): Promise<void> {
    if (target.length !== info.byteLength) {
      throw new GgufError(
        `${this.path}: tensor '${info.name}' has ${info.byteLength} bytes, target holds ${target.length}`,
      );
    }
    await readInto(this.fh, target, this.header.dataOffset + info.offset, this.path);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Thrown by the parser when the prefix read so far ends inside the header. */
const NEED_MORE = Symbol('need more header bytes');
const FIRST_READ = 4 << 20;

async function parseHeaderFromFile(fh: FileHandle, path: string): Promise<GgufHeader> {
  const fileBytes = (await fh.stat()).size;
  let size = Math.min(fileBytes, FIRST_READ);
  for (;;) {
    const buf = Buffer.alloc(size);
    await readInto(fh, buf, 0, path);
    try {
      return parseGgufHeader(buf, fileBytes, path);
    } catch (err) {
      if (err !== NEED_MORE) throw err;
      size = Math.min(fileBytes, size * 4);
    }
  }
}

/** Parses the header from `buf`, a prefix of a file of `fileBytes` bytes. */
export function parseGgufHeader(buf: Buffer, fileBytes: number, path: string): GgufHeader {
  const complete = buf.length >= fileBytes;
  const fail = (why: string): never => {
    throw new GgufError(`${path}: ${why}`);
  };
  let pos = 0;
  const need = (n: number, what: string) => {
    if (pos + n <= buf.length) return;
    if (!complete) throw NEED_MORE;
    fail(`unexpected end of file at byte ${fileBytes} while reading ${what} (truncated?)`);
  };
  const u32 = (what: string): number => {
    need(4, what);
    const v = buf.readUInt32LE(pos);
    pos += 4;
    return v;
  };
  const i32 = (what: string): number => {
    need(4, what);
    const v = buf.readInt32LE(pos);
    pos += 4;
    return v;
  };
  /** A uint64/int64 that must be a safe non-negative count or size. */
  const size64 = (what: string, signed: boolean): number => {
    need(8, what);
    const v = signed ? buf.readBigInt64LE(pos) : buf.readBigUInt64LE(pos);
    if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${what} has an invalid value ${v}`);
    pos += 8;
    return Number(v);
  };
  const string = (what: string): string => {
    const len = size64(`the length of ${what}`, false);
    if (len > fileBytes) fail(`${what} claims ${len} bytes, more than the file's ${fileBytes} (corrupt?)`);
    need(len, what);
    const s = buf.toString('utf8', pos, pos + len);
    pos += len;
    return s;
  };

  if (fileBytes < 4) fail(`${fileBytes} bytes is too small for a GGUF file`);
  if (!buf.subarray(0, 4).equals(MAGIC)) {
    const magic = buf.subarray(0, 4);
    const shown = /^[\x20-\x7e]{4}$/.test(magic.toString('latin1'))
      ? `"${magic.toString('latin1')}"`
      : `0x${magic.toString('hex')}`;
    fail(`not a GGUF file (magic ${shown}, expected "GGUF")`);
  }
  pos = 4;
  const version = u32('the version');
  if (version !== 2 && version !== 3) {
    if ((version & 0xffff) === 0 && version !== 0)
      fail(`GGUF version field 0x${version.toString(16)}: a big-endian file? (only little-endian is read)`);
    fail(
      `GGUF version ${version} is not supported (only versions 2 and 3${version === 1 ? '; version 1 is obsolete' : ''})`,
    );
  }
  const nTensors = size64('the tensor count', true);
  const nKv = size64('the metadata count', true);
  if (nTensors > fileBytes || nKv > fileBytes) fail(`implausible counts: ${nTensors} tensors, ${nKv} keys`);

  const readValue = (typeId: number, what: string, depth: number): GgufValue => {
    const type = TYPE_BY_ID[typeId];
    if (type === undefined) return fail(`${what} has unknown value type ${typeId}`);
    switch (type) {
      case 'u8':
        need(1, what);
        return { type, value: buf[pos++] };
      case 'i8':
        need(1, what);
        return { type, value: buf.readInt8(pos++) };
      case 'u16':
        need(2, what);
        pos += 2;
        return { type, value: buf.readUInt16LE(pos - 2) };
      case 'i16':
        need(2, what);
        pos += 2;
        return { type, value: buf.readInt16LE(pos - 2) };
      case 'u32':
        return { type, value: u32(what) };
      case 'i32':
        return { type, value: i32(what) };
      case 'f32':
        need(4, what);
        pos += 4;
        return { type, value: buf.readFloatLE(pos - 4) };
      case 'f64':
        need(8, what);
        pos += 8;
        return { type, value: buf.readDoubleLE(pos - 8) };
      case 'u64':
        need(8, what);
        pos += 8;
        return { type, value: buf.readBigUInt64LE(pos - 8) };
      case 'i64':
        need(8, what);
        pos += 8;
        return { type, value: buf.readBigInt64LE(pos - 8) };
      case 'bool':
        need(1, what);
        return { type, value: buf[pos++] !== 0 };
      case 'string':
        return { type, value: string(what) };
      case 'array':
        return readArray(what, depth);
    }
  };

  const readArray = (what: string, depth: number): GgufArray => {
    if (depth > 8) fail(`${what} nests arrays more than 8 deep`);
    const itemTypeId = i32(`the item type of ${what}`);
    const itemType = TYPE_BY_ID[itemTypeId];
    if (itemType === undefined) fail(`${what} is an array of unknown value type ${itemTypeId}`);
    const count = size64(`the length of ${what}`, false);
    if (count * MIN_ITEM_BYTES[itemType] > fileBytes)
      fail(`${what} claims ${count} items, more than the file can hold (corrupt?)`);
    if (isTypedItemType(itemType)) {
      const Ctor = NUMBER_ARRAYS[itemType];
      const bytes = count * Ctor.BYTES_PER_ELEMENT;
      need(bytes, what);
      const out = new Ctor(count);
      new Uint8Array(out.buffer).set(buf.subarray(pos, pos + bytes));
      pos += bytes;
      return { type: 'array', itemType, value: out };
    }
    if (itemType === 'bool') {
      need(count, what);
      const out: boolean[] = new Array(count);
      for (let i = 0; i < count; i++) out[i] = buf[pos + i] !== 0;
      pos += count;
      return { type: 'array', itemType, value: out };
    }
    if (itemType === 'string') {
      const out: string[] = new Array(count);
      for (let i = 0; i < count; i++) out[i] = string(`${what}[${i}]`);
      return { type: 'array', itemType, value: out };
    }
    const out: GgufArray[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = readArray(`${what}[${i}]`, depth + 1);
    return { type: 'array', itemType, value: out };
  };

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = string(`metadata key ${i}`);
    if (metadata.has(key)) fail(`duplicate metadata key '${key}'`);
    const typeId = i32(`the value type of metadata '${key}'`);
    metadata.set(key, readValue(typeId, `metadata '${key}'`, 0));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const align = metadata.get('general.alignment');
  if (align !== undefined) {
    if (align.type !== 'u32') fail(`general.alignment must be a u32, is ${align.type}`);
    alignment = align.value as number;
    if (alignment === 0 || (alignment & (alignment - 1)) !== 0)
      fail(`general.alignment ${alignment} is not a power of 2`);
  }

  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = string(`the name of tensor ${i}`);
    if (names.has(name)) fail(`duplicate tensor name '${name}'`);
    names.add(name);
    const nDims = u32(`the dimension count of tensor '${name}'`);
    if (nDims > MAX_DIMS) fail(`tensor '${name}' has ${nDims} dimensions (at most ${MAX_DIMS})`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(size64(`dimension ${d} of tensor '${name}'`, true));
    const type = i32(`the type of tensor '${name}'`);
    const offset = size64(`the data offset of tensor '${name}'`, false);
    let byteLength = 0;
    try {
      byteLength = ggmlTensorBytes(type, dims, `tensor '${name}'`);
    } catch (err) {
      fail((err as Error).message);
    }
    tensors.push({ name, dims, type, typeName: ggmlTypeName(type), offset, byteLength });
  }

  const dataOffset = alignUp(pos, alignment);
  const dataBytes = fileBytes - dataOffset;
  for (const t of tensors) {
    if (t.offset % alignment !== 0)
      fail(`tensor '${t.name}' has data offset ${t.offset}, not a multiple of the alignment ${alignment}`);
    if (t.offset + t.byteLength > dataBytes) {
      fail(
        `tensor '${t.name}' (${t.typeName} [${t.dims}], data bytes ${t.offset}..${t.offset + t.byteLength}) ` +
          `runs past the end of the file (${Math.max(0, dataBytes)} data bytes; truncated?)`,
      );
    }
  }
  const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].offset < prev.offset + prev.byteLength)
      fail(`tensors '${prev.name}' and '${sorted[i].name}' overlap in the data section`);
  }
  return { path, version, metadata, tensors, alignment, dataOffset, fileBytes };
}

const alignUp = (n: number, alignment: number): number => Math.ceil(n / alignment) * alignment;

// ---- typed metadata access ----------------------------------------------------------------------------

const NUMBER_TYPES = new Set<GgufValueType>([
  'u8',
  'i8',
  'u16',
  'i16',
  'u32',
  'i32',
  'f32',
  'f64',
  'u64',
  'i64',
]);

/** A string value; undefined when absent, an error when present with another type. */
export function metaString(h: GgufHeader, key: string): string | undefined {
  const v = h.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type !== 'string')
    throw new GgufError(`${h.path}: metadata '${key}' is ${describeValue(v)}, expected a string`);
  return v.value;
}

/** A numeric scalar of any width, as a number (64-bit integers must be safe integers). */
export function metaNumber(h: GgufHeader, key: string): number | undefined {
  const v = h.metadata.get(key);
  if (v === undefined) return undefined;
  if (!NUMBER_TYPES.has(v.type))
    throw new GgufError(`${h.path}: metadata '${key}' is ${describeValue(v)}, expected a number`);
  if (typeof v.value === 'bigint') {
    if (v.value > BigInt(Number.MAX_SAFE_INTEGER) || v.value < BigInt(Number.MIN_SAFE_INTEGER))
      throw new GgufError(`${h.path}: metadata '${key}' = ${v.value} is out of range`);
    return Number(v.value);
  }
  return v.value as number;
}

export function metaBool(h: GgufHeader, key: string): boolean | undefined {
  const v = h.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type !== 'bool')
    throw new GgufError(`${h.path}: metadata '${key}' is ${describeValue(v)}, expected a bool`);
  return v.value;
}

export function metaStrings(h: GgufHeader, key: string): string[] | undefined {
  const v = h.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type !== 'array' || v.itemType !== 'string')
    throw new GgufError(`${h.path}: metadata '${key}' is ${describeValue(v)}, expected an array of strings`);
  return v.value as string[];
}

/** A numeric array (not 64-bit integers) as numbers. */
export function metaNumbers(h: GgufHeader, key: string): ArrayLike<number> | undefined {
  const v = h.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type !== 'array' || !isTypedItemType(v.itemType) || v.itemType === 'u64' || v.itemType === 'i64')
    throw new GgufError(`${h.path}: metadata '${key}' is ${describeValue(v)}, expected an array of numbers`);
  return v.value as ArrayLike<number>;
}

export function describeValue(v: GgufValue): string {
  if (v.type === 'array') return `an array of ${v.value.length} ${v.itemType}`;
  return `a ${v.type} (${typeof v.value === 'string' ? JSON.stringify(v.value.slice(0, 40)) : String(v.value)})`;
}

// ---- writer -------------------------------------------------------------------------------------------

export interface GgufTensorSource {
  name: string;
  type: number;
  /** ne[0] (row length) first. */
  dims: readonly number[];
  /** The bytes, or a function producing them when the tensor is written (so they need not all be held). */
  data: Uint8Array | (() => Uint8Array | Promise<Uint8Array>);
}

export interface GgufWriteInput {
  metadata: Iterable<readonly [string, GgufValue]>;
  tensors: readonly GgufTensorSource[];
}

/** Growable little-endian byte buffer for the header. */
class ByteSink {
  buf = Buffer.alloc(1 << 16);
  length = 0;

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }

  u32(v: number): void {
    this.ensure(4);
    this.length = this.buf.writeUInt32LE(v, this.length);
  }

  i32(v: number): void {
    this.ensure(4);
    this.length = this.buf.writeInt32LE(v, this.length);
  }

  u64(v: number | bigint): void {
    this.ensure(8);
    this.length = this.buf.writeBigUInt64LE(BigInt(v), this.length);
  }

  i64(v: number | bigint): void {
    this.ensure(8);
    this.length = this.buf.writeBigInt64LE(BigInt(v), this.length);
  }

  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.bytes(b);
  }

  pad(alignment: number): void {
    const n = alignUp(this.length, alignment) - this.length;
    this.ensure(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }

  view(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeScalar(sink: ByteSink, v: GgufValue, what: string): void {
  const fail = (why: string): never => {
    throw new GgufError(`${what}: ${why}`);
  };
  const num = (): number => {
    if (typeof v.value !== 'number') fail(`a ${v.type} value must be a number`);
    return v.value as number;
  };
  try {
    switch (v.type) {
      case 'u8':
      case 'i8':
      case 'u16':
      case 'i16':
      case 'u32':
      case 'i32':
      case 'f32':
      case 'f64': {
        const Ctor = NUMBER_ARRAYS[v.type];
        const x = num();
        if (v.type !== 'f32' && v.type !== 'f64' && !Number.isInteger(x)) fail(`${x} is not an integer`);
        const one = Ctor.of(x);
        if (v.type !== 'f32' && v.type !== 'f64' && one[0] !== x) fail(`${x} does not fit a ${v.type}`);
        sink.bytes(new Uint8Array(one.buffer));
        return;
      }
      case 'u64':
        sink.u64(v.value);
        return;
      case 'i64':
        sink.i64(v.value);
        return;
      case 'bool':
        if (typeof v.value !== 'boolean') fail('a bool value must be a boolean');
        sink.bytes(Uint8Array.of(v.value ? 1 : 0));
        return;
      case 'string':
        if (typeof v.value !== 'string') fail('a string value must be a string');
        sink.string(v.value);
        return;
      case 'array':
        writeArray(sink, v, what);
        return;
      default:
        fail(`unknown value type ${(v as { type: unknown }).type}`);
    }
  } catch (err) {
    if (err instanceof GgufError) throw err;
    fail((err as Error).message);
  }
}

function writeArray(sink: ByteSink, a: GgufArray, what: string): void {
  const fail = (why: string): never => {
    throw new GgufError(`${what}: ${why}`);
  };
  const typeId = TYPE_IDS[a.itemType];
  if (typeId === undefined) fail(`unknown array item type ${a.itemType}`);
  sink.i32(typeId);
  sink.u64(a.value.length);
  if (isTypedItemType(a.itemType)) {
    const Ctor = NUMBER_ARRAYS[a.itemType];
    if (!(a.value instanceof Ctor)) fail(`an array of ${a.itemType} must be a ${Ctor.name}`);
    const typed = a.value as InstanceType<typeof Ctor>;
    sink.bytes(new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength));
    return;
  }
  if (!Array.isArray(a.value)) fail(`an array of ${a.itemType} must be a plain array`);
  if (a.itemType === 'bool') {
    for (const b of a.value as boolean[]) {
      if (typeof b !== 'boolean') fail('bool array items must be booleans');
      sink.bytes(Uint8Array.of(b ? 1 : 0));
    }
  } else if (a.itemType === 'string') {
    for (const s of a.value as string[]) {
      if (typeof s !== 'string') fail('string array items must be strings');
      sink.string(s);
    }
  } else {
    (a.value as GgufArray[]).forEach((inner, i) => {
      if (inner?.type !== 'array') fail(`item ${i} of a nested array is not an array`);
      writeArray(sink, inner, `${what}[${i}]`);
    });
  }
}

/**
 * Writes a GGUF file (version 3 unless told otherwise). The alignment is `general.alignment` when the
 * metadata has it, else 32. The file appears under its final name only when complete.
 */
export async function writeGguf(
  path: string,
  input: GgufWriteInput,
  options: { version?: 2 | 3; onProgress?: ProgressFn } = {},
): Promise<{ bytes: number; sha256: string }> {
  assertLittleEndianHost();
  const metadata = [...input.metadata];
  const keys = new Set<string>();
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  for (const [key, value] of metadata) {
    if (keys.has(key)) throw new GgufError(`${path}: duplicate metadata key '${key}'`);
    keys.add(key);
    if (key === 'general.alignment') {
      const a = value.value;
      if (value.type !== 'u32' || typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0)
        throw new GgufError(`${path}: general.alignment must be a u32 power of 2`);
      alignment = a;
    }
  }

  const sink = new ByteSink();
  sink.bytes(MAGIC);
  sink.u32(options.version ?? 3);
  sink.i64(input.tensors.length);
  sink.i64(metadata.length);
  for (const [key, value] of metadata) {
    sink.string(key);
    sink.i32(TYPE_IDS[value.type] ?? -1);
    writeScalar(sink, value, `${path}: metadata '${key}'`);
  }

  const names = new Set<string>();
  const sizes: number[] = [];
  let offset = 0;
  for (const t of input.tensors) {
    const what = `${path}: tensor '${t.name}'`;
    if (names.has(t.name)) throw new GgufError(`${path}: duplicate tensor name '${t.name}'`);
    names.add(t.name);
    if (Buffer.byteLength(t.name, 'utf8') > MAX_NAME_BYTES)
      throw new GgufError(`${what}: name is longer than ${MAX_NAME_BYTES} bytes (llama.cpp's limit)`);
    if (
      t.dims.length < 1 ||
      t.dims.length > MAX_DIMS ||
      !t.dims.every((d) => Number.isSafeInteger(d) && d >= 0)
    )
      throw new GgufError(`${what}: invalid dims [${t.dims}]`);
    const bytes = ggmlTensorBytes(t.type, t.dims, what);
    sink.string(t.name);
    sink.u32(t.dims.length);
    for (const d of t.dims) sink.i64(d);
    sink.i32(t.type);
    sink.u64(offset);
    sizes.push(bytes);
    offset += alignUp(bytes, alignment);
  }
  sink.pad(alignment);
  const header = sink.view();

  const total = offset;
  let done = 0;
  const progress = (n: number) => {
    done += n;
    options.onProgress?.(done, total);
  };
  return writeFileHashed(path, async (write) => {
    await write(header);
    for (let i = 0; i < input.tensors.length; i++) {
      const t = input.tensors[i];
      const data = typeof t.data === 'function' ? await t.data() : t.data;
      if (data.length !== sizes[i]) {
        throw new GgufError(
          `${path}: tensor '${t.name}' (${ggmlTypeName(t.type)} [${t.dims}]) needs ${sizes[i]} bytes, got ${data.length}`,
        );
      }
      await write(data, progress);
      const pad = alignUp(data.length, alignment) - data.length;
      if (pad > 0) await write(new Uint8Array(pad), progress);
    }
    options.onProgress?.(total, total);
  });
}
