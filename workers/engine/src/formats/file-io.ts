/** Positioned reads and writes that either move every byte or fail with a message naming the file. */
import { createHash } from 'node:crypto';
import { type FileHandle, open, rename, rm } from 'node:fs/promises';

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

/** Chunk size of large writes, so progress moves during big tensors and no single write is huge. */
const WRITE_CHUNK = 16 * 1024 * 1024;

/**
 * Writes a file through `body`, hashing every byte: under a temporary name, synced, then renamed into
 * place, so `path` is either absent or complete. `write(bytes, onChunk)` writes in chunks and reports each.
 */
export async function writeFileHashed(
  path: string,
  body: (write: (bytes: Uint8Array, onChunk?: (n: number) => void) => Promise<void>) => Promise<void>,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w');
  let written = 0;
  try {
    await body(async (bytes, onChunk) => {
      for (let at = 0; at < bytes.length; at += WRITE_CHUNK) {
        const chunk = bytes.subarray(at, Math.min(bytes.length, at + WRITE_CHUNK));
        hash.update(chunk);
        await writeAll(fh, chunk);
        written += chunk.length;
        onChunk?.(chunk.length);
      }
    });
    await fh.sync();
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  await rename(tmp, path);
  return { bytes: written, sha256: hash.digest('hex') };
}
