/** Positioned reads and writes that either move every byte or fail with a message naming the file. */
import type { FileHandle } from 'node:fs/promises';

/** Reads exactly `target.length` bytes at `position`, failing clearly if the file ends first. */
export async function readInto(
  fh: FileHandle,
  target: Uint8Array,
  position: number,
  path: string,
): Promise<void> {
  let at = 0;
  while (at < target.length) {
    // Node caps a single read at 2 GiB.
    const want = Math.min(target.length - at, 1 << 30);
    const { bytesRead } = await fh.read(target, at, want, position + at);
    if (bytesRead === 0)
      throw new Error(`${path}: unexpected end of file at byte ${position + at} (truncated?)`);
    at += bytesRead;
  }
}

export async function readExactly(
  fh: FileHandle,
  position: number,
  length: number,
  path: string,
): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await readInto(fh, buf, position, path);
  return buf;
}

export async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, at, bytes.length - at);
    at += bytesWritten;
  }
}

/** The bytes of a typed array, without copying. */
export const bytesOf = (a: ArrayBufferView): Uint8Array =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
