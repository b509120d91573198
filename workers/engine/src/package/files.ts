/** Adding files (exit heads, drafters, skip sets, ...) to an existing package. */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { hashBytes } from './checksum';
import { readManifest } from './load';
import { checkRelativePath, MANIFEST_FILE, type PackageManifest, parseManifest } from './manifest';

/** Per-folder queue: concurrent addPackageFile calls in one process apply one after another. */
const queues = new Map<string, Promise<unknown>>();

/**
 * Writes `bytes` to `relPath` in the package, records its size and sha256, and merges `manifestPatch`
 * into the manifest: plain objects merge key by key (so `{exitHeads: {'3': ...}}` keeps other heads),
 * other values replace, and `null` deletes a key. The file and then the manifest are each written to a
 * temporary name and renamed, so readers see either the old or the new state, never a torn one.
 * (Serialized within a process; separate processes must not modify one package at the same time.)
 */
export async function addPackageFile(
  dir: string,
  relPath: string,
  bytes: Uint8Array | string,
  manifestPatch: Record<string, unknown> = {},
): Promise<PackageManifest> {
  checkRelativePath(relPath, dir);
  const key = path.resolve(dir);
  const previous = queues.get(key) ?? Promise.resolve();
  const run = previous.catch(() => undefined).then(() => addNow(dir, relPath, bytes, manifestPatch));
  queues.set(key, run);
  try {
    return await run;
  } finally {
    if (queues.get(key) === run) queues.delete(key);
  }
}

async function addNow(
  dir: string,
  relPath: string,
  bytes: Uint8Array | string,
  manifestPatch: Record<string, unknown>,
): Promise<PackageManifest> {
  const manifest = await readManifest(dir);
  const data = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes;
  const target = path.join(dir, relPath);
  await mkdir(path.dirname(target), { recursive: true });
  await writeAtomically(target, data);

  const merged = mergePatch(manifest, manifestPatch) as PackageManifest;
  merged.files = { ...merged.files, [relPath]: hashBytes(data) };
  const updated = parseManifest(merged, dir); // a bad patch must not leave a manifest the loader rejects
  await writeAtomically(path.join(dir, MANIFEST_FILE), Buffer.from(`${JSON.stringify(updated, null, 2)}\n`));
  return updated;
}

async function writeAtomically(file: string, data: Uint8Array): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await writeFile(tmp, data, { flush: true });
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !ArrayBuffer.isView(v);

/** JSON merge patch (RFC 7386): objects merge recursively, null deletes, anything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isPlainObject(patch)) return patch;
  const out: Record<string, unknown> = isPlainObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}
