import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { FileRecord } from './manifest';

/** sha256 and size of a file, streamed so a multi-gigabyte file is never held in memory. */
export async function hashFile(file: string): Promise<FileRecord> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * 1024 * 1024 })) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

export function hashBytes(data: Uint8Array): FileRecord {
  return { sha256: createHash('sha256').update(data).digest('hex'), bytes: data.length };
}
