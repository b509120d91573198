/**
 * Pulls a model package from S3 into a local cache, verifying every file against the manifest.
 *
 * Order: list the prefix, download manifest.json first, then every file it names, checking each object's
 * size (from the listing and the download) and sha256 against the manifest. A verified package lands
 * atomically (rename of a staging folder) under <cacheDir>/<bucket>/<prefix>/<manifest sha256[0:16]>
 * with a marker file, so a restarted worker reuses it without downloading again. A package that does
 * not verify is refused with an error that names the file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { hashBytes, MANIFEST_FILE, type PackageManifest, parseManifest } from '@ppsd/engine/package';

export { MANIFEST_FILE };

import { objectKey } from './s3';

const MARKER_FILE = '.ppsd-verified.json';

export interface PackageSource {
  bucket: string;
  prefix: string;
}

export interface ManifestFile {
  path: string;
  size: number;
  sha256: string;
}

export interface PulledPackage {
  dir: string;
  manifestSha256: string;
  fromCache: boolean;
  bytes: number;
}

/** The package does not verify: `file` names the offending file (package-relative path). */
export class PackageVerificationError extends Error {
  override name = 'PackageVerificationError';
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(message);
  }
}

/**
 * The files a manifest names with their size and sha256, after the engine's own manifest validation
 * (`parseManifest`: the one definition of a package), so the pull refuses what the loader would refuse.
 */
export function manifestFiles(manifest: unknown): ManifestFile[] {
  let parsed: PackageManifest;
  try {
    parsed = parseManifest(manifest, 'manifest.json');
  } catch (err) {
    throw new PackageVerificationError((err as Error).message, MANIFEST_FILE);
  }
  return Object.entries(parsed.files).map(([path, f]) => ({ path, size: f.bytes, sha256: f.sha256 }));
}

export interface PullOptions {
  /**
   * Pull only these files of the package (besides manifest.json), e.g. the tokenizer for an API that
   * counts prompt tokens. Each is still sha256-checked; the partial copy is cached apart from full ones.
   */
  only?: (manifest: PackageManifest) => string[];
  cacheDir: string;
  log?: (msg: string) => void;
  /** Extra whole-package verification (the engine's verifyPackage) run on the staged folder. */
  verify?: (dir: string) => Promise<unknown>;
  /** Parallel downloads (default 4). */
  parallel?: number;
}

export const cacheDirFor = (cacheDir: string, src: PackageSource, manifestSha256: string): string =>
  join(cacheDir, src.bucket, src.prefix || '_root', manifestSha256.slice(0, 16));

export async function pullPackage(
  client: S3Client,
  src: PackageSource,
  opts: PullOptions,
): Promise<PulledPackage> {
  const log = opts.log ?? (() => {});
  const where = `s3://${src.bucket}/${src.prefix}`;
  const listing = await listPrefix(client, src);
  const manifestKey = objectKey(src.prefix, MANIFEST_FILE);
  if (!listing.has(manifestKey)) {
    throw new PackageVerificationError(
      `no ${MANIFEST_FILE} under ${where}: not a model package`,
      MANIFEST_FILE,
    );
  }
  const manifestBytes = await getObjectBytes(client, src.bucket, manifestKey);
  const manifestSha256 = sha256(manifestBytes);
  let manifest: unknown;
  try {
    manifest = JSON.parse(manifestBytes.toString('utf8'));
  } catch (err) {
    throw new PackageVerificationError(
      `${where}/${MANIFEST_FILE} is not valid JSON: ${(err as Error).message}`,
      MANIFEST_FILE,
    );
  }
  const all = manifestFiles(manifest);
  const wanted = opts.only ? new Set(opts.only(parseManifest(manifest, where))) : undefined;
  const files = wanted ? all.filter((f) => wanted.has(f.path)) : all;
  const dir = `${cacheDirFor(opts.cacheDir, src, manifestSha256)}${wanted ? '.subset' : ''}`;
  const total = files.reduce((n, f) => n + f.size, 0);

  if (await cacheIsValid(dir, manifestSha256, files)) {
    log(`package ${where} (manifest ${manifestSha256.slice(0, 12)}) found verified in cache ${dir}`);
    return { dir, manifestSha256, fromCache: true, bytes: total };
  }

  for (const f of files) {
    const key = objectKey(src.prefix, f.path);
    const size = listing.get(key);
    if (size === undefined)
      throw new PackageVerificationError(
        `${f.path}: named by the manifest but missing from ${where}`,
        f.path,
      );
    if (size !== f.size) {
      throw new PackageVerificationError(
        `${f.path}: object is ${size} bytes in ${where}, the manifest says ${f.size}`,
        f.path,
      );
    }
  }

  const staging = `${dir}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
  await mkdir(staging, { recursive: true });
  try {
    log(`pulling ${where}: ${files.length} files, ${formatBytes(total)}`);
    const started = Date.now();
    let done = 0;
    const queue = [...files];
    const parallel = Math.max(1, opts.parallel ?? 4);
    await Promise.all(
      Array.from({ length: Math.min(parallel, queue.length) }, async () => {
        for (let f = queue.shift(); f; f = queue.shift()) {
          await downloadVerified(client, src, f, staging);
          done += f.size;
          log(
            `  ${f.path} ${formatBytes(f.size)} sha256 ok (${Math.round((100 * done) / Math.max(1, total))}%)`,
          );
        }
      }),
    );
    await writeFile(join(staging, MANIFEST_FILE), manifestBytes);
    if (opts.verify && !wanted) await opts.verify(staging);
    await writeFile(
      join(staging, MARKER_FILE),
      JSON.stringify({ manifestSha256, source: where, at: new Date().toISOString() }),
    );
    try {
      await rename(staging, dir);
    } catch (err) {
      // Another process finished the same package first: keep its copy if it is valid.
      if (!(await cacheIsValid(dir, manifestSha256, files))) throw err;
      await rm(staging, { recursive: true, force: true });
    }
    log(`package ${where} verified and cached in ${dir} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    return { dir, manifestSha256, fromCache: false, bytes: total };
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw err;
  } finally {
    await removeStalePartials(dirname(dir)).catch(() => {});
  }
}

async function downloadVerified(
  client: S3Client,
  src: PackageSource,
  f: ManifestFile,
  staging: string,
): Promise<void> {
  const target = join(staging, f.path);
  await mkdir(dirname(target), { recursive: true });
  const res = await client.send(
    new GetObjectCommand({ Bucket: src.bucket, Key: objectKey(src.prefix, f.path) }),
  );
  if (!res.Body) throw new PackageVerificationError(`${f.path}: empty response body`, f.path);
  const hash = createHash('sha256');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  await pipeline(res.Body as NodeJS.ReadableStream, meter, createWriteStream(target));
  const digest = hash.digest('hex');
  if (size !== f.size) {
    throw new PackageVerificationError(
      `${f.path}: downloaded ${size} bytes, the manifest says ${f.size}`,
      f.path,
    );
  }
  if (digest !== f.sha256) {
    throw new PackageVerificationError(
      `${f.path}: sha256 mismatch (manifest ${f.sha256}, downloaded ${digest}): refusing the package`,
      f.path,
    );
  }
}

/** A cached folder is reused when its marker names this manifest and every file has its manifest size. */
async function cacheIsValid(dir: string, manifestSha256: string, files: ManifestFile[]): Promise<boolean> {
  try {
    const marker = JSON.parse(await readFile(join(dir, MARKER_FILE), 'utf8')) as { manifestSha256?: string };
    if (marker.manifestSha256 !== manifestSha256) return false;
    if (sha256(await readFile(join(dir, MANIFEST_FILE))) !== manifestSha256) return false;
    for (const f of files) if ((await stat(join(dir, f.path))).size !== f.size) return false;
    return true;
  } catch {
    return false;
  }
}

async function removeStalePartials(parent: string): Promise<void> {
  for (const name of await readdir(parent)) {
    const m = /\.partial-(\d+)-/.exec(name);
    if (m && !pidAlive(Number(m[1]))) await rm(join(parent, name), { recursive: true, force: true });
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function listPrefix(client: S3Client, src: PackageSource): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let token: string | undefined;
  do {
    const res = await client.send(
      new ListObjectsV2Command({
        Bucket: src.bucket,
        Prefix: src.prefix ? `${src.prefix}/` : undefined,
        ContinuationToken: token,
      }),
    );
    for (const o of res.Contents ?? []) if (o.Key) out.set(o.Key, o.Size ?? 0);
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
  return out;
}

async function getObjectBytes(client: S3Client, bucket: string, key: string): Promise<Buffer> {
  const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  if (!res.Body) throw new Error(`s3://${bucket}/${key}: empty body`);
  return Buffer.from(await res.Body.transformToByteArray());
}

const sha256 = (bytes: Uint8Array): string => hashBytes(bytes).sha256;

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
