/**
 * safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
 * N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {..}}`, then the
 * tensor bytes (offsets relative to the end of the header, contiguous, no holes).
 *
 * Reading converts F32/F16/BF16 to Float32Array, one tensor at a time straight from the file so a large
 * checkpoint is never held twice; writing emits F32 and hashes the bytes as they go out.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { endianness } from 'node:os';
import { bf16ToF32, f16ToF32 } from '../model/matrix';
import { bytesOf, readExactly, readInto, writeFileHashed } from './file-io';
import type { ProgressFn } from './progress';

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

/** A tensor exactly as stored (16-bit floats as their bit patterns, quantized codes as bytes). */
export type StoredTensor =
  | { dtype: 'F32'; shape: number[]; data: Float32Array }
  | { dtype: 'F16' | 'BF16'; shape: number[]; data: Uint16Array }
  | { dtype: 'U8'; shape: number[]; data: Uint8Array };
export type StoredDtype = StoredTensor['dtype'];
const STORED_DTYPES = new Set<string>(['F32', 'F16', 'BF16', 'U8']);

/** The dtype a tensor is written as (a plain Tensor is F32). */
const dtypeOf = (t: Tensor | StoredTensor): StoredDtype => ('dtype' in t ? t.dtype : 'F32');

/** One header entry; `begin`/`end` are byte offsets relative to the start of the data section. */
export interface TensorEntry {
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
  dataOffset: number; // absolute file offset of the data section
  fileBytes: number;
}

const DTYPE_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);
const MAX_HEADER_BYTES = 100 * 1024 * 1024; // the reference implementation's own limit

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

function assertLittleEndianHost(): void {
  // Tensor bytes are copied into typed arrays as-is; safetensors is little-endian.
  if (endianness() !== 'LE') throw new SafetensorsError('safetensors: big-endian hosts are not supported');
}

export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const fh = await open(path, 'r');
  try {
    return await readHeader(fh, path);
  } finally {
    await fh.close();
  }
}

async function readHeader(fh: FileHandle, path: string): Promise<SafetensorsHeader> {
  const fileBytes = (await fh.stat()).size;
  const fail = (what: string): never => {
    throw new SafetensorsError(`${path}: not a valid safetensors file: ${what}`);
  };
  if (fileBytes < 8) fail(`file has ${fileBytes} bytes, less than the 8-byte header length`);
  const lenBuf = await readExactly(fh, 0, 8, path);
  const headerLen = Number(lenBuf.readBigUInt64LE(0));
  if (headerLen < 2 || headerLen > MAX_HEADER_BYTES) fail(`implausible header length ${headerLen}`);
  if (8 + headerLen > fileBytes) {
    fail(`header length ${headerLen} runs past the end of the file (${fileBytes} bytes; truncated?)`);
  }
  const headerText = (await readExactly(fh, 8, headerLen, path)).toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(headerText);
  } catch (err) {
    return fail(`header is not JSON (${(err as Error).message})`);
  }
  if (!isPlainObject(json)) return fail('header is not a JSON object');

  const dataOffset = 8 + headerLen;
  const dataBytes = fileBytes - dataOffset;
  const tensors = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(value) || Object.values(value).some((v) => typeof v !== 'string')) {
        fail('__metadata__ must map strings to strings');
      }
      metadata = value as Record<string, string>;
      continue;
    }
    tensors.set(name, parseEntry(name, value, fail));
  }

  // The data section must be covered exactly, in order, with no holes or overlaps.
  const sorted = [...tensors.entries()].sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let expectedBegin = 0;
  for (const [name, e] of sorted) {
    if (e.begin !== expectedBegin) {
      fail(`tensor '${name}' starts at data byte ${e.begin}, expected ${expectedBegin} (hole or overlap)`);
    }
    expectedBegin = e.end;
  }
  if (expectedBegin > dataBytes) {
    fail(`tensors need ${expectedBegin} data bytes but the file has ${dataBytes} (truncated?)`);
  }
  if (expectedBegin < dataBytes) {
    fail(`tensors cover ${expectedBegin} data bytes but the file has ${dataBytes} (trailing bytes)`);
  }
  return { tensors, metadata, dataOffset, fileBytes };
}

function parseEntry(name: string, value: unknown, fail: (what: string) => never): TensorEntry {
  if (!isPlainObject(value)) return fail(`entry '${name}' is not an object`);
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES))
    fail(`tensor '${name}' has unknown dtype ${dtype}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    fail(`tensor '${name}' has an invalid shape ${JSON.stringify(shape)}`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    fail(`tensor '${name}' has invalid data_offsets ${JSON.stringify(offsets)}`);
  }
  const dims = shape as number[];
  const [begin, end] = offsets as [number, number];
  const expected = dims.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype as string];
  if (end - begin !== expected) {
    fail(
      `tensor '${name}' (${dtype} ${JSON.stringify(dims)}) needs ${expected} bytes, offsets span ${end - begin}`,
    );
  }
  return { dtype: dtype as string, shape: dims, begin, end };
}

type ReadOptions = { names?: Iterable<string>; onProgress?: ProgressFn };
type ReadOne<T> = (fh: FileHandle, header: SafetensorsHeader, name: string, entry: TensorEntry) => Promise<T>;

/** Reads the named tensors (default: all) one at a time straight from the file, with `readOne`. */
async function readTensors<T>(
  path: string,
  options: ReadOptions,
  readOne: ReadOne<T>,
): Promise<{ tensors: Map<string, T>; metadata: Record<string, string> }> {
  assertLittleEndianHost();
  const fh = await open(path, 'r');
  try {
    const header = await readHeader(fh, path);
    const names = options.names ? [...options.names] : [...header.tensors.keys()];
    const entries = names.map((name) => {
      const entry = header.tensors.get(name);
      if (!entry) throw new SafetensorsError(`${path}: has no tensor '${name}'`);
      return [name, entry] as const;
    });
    const total = entries.reduce((sum, [, e]) => sum + (e.end - e.begin), 0);
    let done = 0;
    const tensors = new Map<string, T>();
    for (const [name, entry] of entries) {
      tensors.set(name, await readOne(fh, header, name, entry));
      done += entry.end - entry.begin;
      options.onProgress?.(done, total);
    }
    return { tensors, metadata: header.metadata };
  } finally {
    await fh.close();
  }
}

/** Reads the named tensors (default: all) as float32. */
export function readSafetensors(path: string, options: ReadOptions = {}) {
  return readTensors<Tensor>(path, options, async (fh, header, name, entry) => ({
    shape: entry.shape,
    data: await readTensorData(fh, path, header, name, entry),
  }));
}

/**
 * Reads the named tensors (default: all) as they are stored: F32, F16, BF16 and U8 without conversion
 * (model packages keep 16-bit and quantized weights in their own dtype).
 */
export function readStoredTensors(path: string, options: ReadOptions = {}) {
  return readTensors<StoredTensor>(path, options, async (fh, header, name, entry) => {
    if (!STORED_DTYPES.has(entry.dtype)) {
      throw new SafetensorsError(
        `${path}: tensor '${name}' has dtype ${entry.dtype}; only F32, F16, BF16 and U8`,
      );
    }
    const count = entry.shape.reduce((a, b) => a * b, 1);
    const data =
      entry.dtype === 'F32'
        ? new Float32Array(count)
        : entry.dtype === 'U8'
          ? new Uint8Array(count)
          : new Uint16Array(count);
    await readInto(fh, new Uint8Array(data.buffer), header.dataOffset + entry.begin, path);
    return { dtype: entry.dtype, shape: entry.shape, data } as StoredTensor;
  });
}

async function readTensorData(
  fh: FileHandle,
  path: string,
  header: SafetensorsHeader,
  name: string,
  entry: TensorEntry,
): Promise<Float32Array> {
  if (!FLOAT_DTYPES.has(entry.dtype)) {
    throw new SafetensorsError(
      `${path}: tensor '${name}' has dtype ${entry.dtype}; only F32, F16 and BF16 are read`,
    );
  }
  const count = entry.shape.reduce((a, b) => a * b, 1);
  const position = header.dataOffset + entry.begin;
  if (entry.dtype === 'F32') {
    const out = new Float32Array(count);
    await readInto(fh, new Uint8Array(out.buffer), position, path);
    return out;
  }
  const halves = new Uint16Array(count);
  await readInto(fh, new Uint8Array(halves.buffer), position, path);
  return entry.dtype === 'BF16' ? bf16ToF32(halves) : f16ToF32(halves);
}

/**
 * Writes tensors in the given order (plain Tensors as F32, StoredTensors in their own dtype). The file appears under its final name only when complete
 * (written to a temporary name, then renamed). Returns its size and sha256.
 */
export async function writeSafetensors(
  path: string,
  tensors: Iterable<[string, Tensor | StoredTensor]>,
  options: { metadata?: Record<string, string>; onProgress?: ProgressFn } = {},
): Promise<{ bytes: number; sha256: string }> {
  assertLittleEndianHost();
  const list = [...tensors];
  const headerObj: Record<string, unknown> = {};
  if (options.metadata && Object.keys(options.metadata).length > 0) headerObj.__metadata__ = options.metadata;
  let offset = 0;
  for (const [name, t] of list) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new SafetensorsError(
        `tensor '${name}': shape ${JSON.stringify(t.shape)} needs ${count} values, got ${t.data.length}`,
      );
    }
    headerObj[name] = {
      dtype: dtypeOf(t),
      shape: t.shape,
      data_offsets: [offset, offset + t.data.byteLength],
    };
    offset += t.data.byteLength;
  }
  let headerJson = Buffer.from(JSON.stringify(headerObj), 'utf8');
  // Pad with spaces (allowed by the format) so the data section is 8-byte aligned (readers copy each tensor
  // into its own array, so tensors after an odd-sized one need no alignment of their own).
  const padded = Math.ceil(headerJson.length / 8) * 8;
  headerJson = Buffer.concat([headerJson, Buffer.alloc(padded - headerJson.length, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerJson.length));

  const total = offset;
  let done = 0;
  return writeFileHashed(path, async (write) => {
    await write(prefix);
    await write(headerJson);
    for (const [, t] of list) {
      await write(bytesOf(t.data), (n) => {
        done += n;
        options.onProgress?.(done, total);
      });
    }
  });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
