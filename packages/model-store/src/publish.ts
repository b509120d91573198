/**
 * Uploads a model package folder to s3://bucket/prefix for workers to pull. The package is verified
 * first (every file the manifest names: size + sha256), then every file is uploaded (multipart for large
 * ones) and manifest.json goes last, so a worker never sees a manifest whose files are not there yet.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { MANIFEST_FILE, type ManifestFile, manifestFiles, PackageVerificationError } from './package-cache';
import { objectKey, type S3Location } from './s3';

export interface PublishProgress {
  file: string;
  fileBytes: number;
  loaded: number; // bytes of all files uploaded so far
  total: number;
}

export interface PublishOptions {
  /** Extra whole-package verification (the engine's verifyPackage). */
  verify?: (dir: string) => Promise<unknown>;
  onProgress?: (p: PublishProgress) => void;
  log?: (msg: string) => void;
  partSize?: number;
}

/** Checks every file the manifest names against its size and sha256; returns the file list. */
export async function verifyPackageFiles(dir: string): Promise<ManifestFile[]> {
  let manifest: unknown;
  try {
    manifest = JSON.parse(await readFile(join(dir, MANIFEST_FILE), 'utf8'));
  } catch (err) {
    throw new PackageVerificationError(
      `${join(dir, MANIFEST_FILE)}: ${(err as Error).message}`,
      MANIFEST_FILE,
    );
  }
  const files = manifestFiles(manifest);
  for (const f of files) {
    const path = join(dir, f.path);
    const st = await stat(path).catch(() => null);
    if (!st)
      throw new PackageVerificationError(`${f.path}: named by the manifest but missing from ${dir}`, f.path);
    if (st.size !== f.size)
      throw new PackageVerificationError(`${f.path}: ${st.size} bytes, the manifest says ${f.size}`, f.path);
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
    const digest = hash.digest('hex');
    if (digest !== f.sha256) {
      throw new PackageVerificationError(
        `${f.path}: sha256 ${digest} does not match the manifest's ${f.sha256}`,
        f.path,
      );
    }
  }
  return files;
}

export async function publishPackage(
  client: S3Client,
  dir: string,
  dest: S3Location,
  opts: PublishOptions = {},
): Promise<{ files: number; bytes: number }> {
  const files = await verifyPackageFiles(dir);
  if (opts.verify) await opts.verify(dir);
  const manifestSize = (await stat(join(dir, MANIFEST_FILE))).size;
  const uploads = [
    ...files.map((f) => ({ path: f.path, size: f.size })),
    { path: MANIFEST_FILE, size: manifestSize },
  ];
  const total = uploads.reduce((n, f) => n + f.size, 0);
  let finished = 0;
  for (const f of uploads) {
    const upload = new Upload({
      client,
      params: {
        Bucket: dest.bucket,
        Key: objectKey(dest.prefix, f.path),
        Body: createReadStream(join(dir, f.path)),
      },
      partSize: Math.max(5 * 1024 * 1024, opts.partSize ?? 16 * 1024 * 1024),
      queueSize: 4,
    });
    upload.on('httpUploadProgress', (p) => {
      opts.onProgress?.({
        file: f.path,
        fileBytes: f.size,
        loaded: finished + Math.min(p.loaded ?? 0, f.size),
        total,
      });
    });
    await upload.done();
    finished += f.size;
    opts.onProgress?.({ file: f.path, fileBytes: f.size, loaded: finished, total });
    opts.log?.(`uploaded ${f.path} (${f.size} bytes)`);
  }
  return { files: uploads.length, bytes: total };
}
