/**
 * Seeding the local stack: the embedded stories260K checkpoint (../shared/models/stories260K) imported
 * into a model package with the engine's own library calls (what `ppsd import` does), or any model given
 * with `--model` imported once by `ppsd import` (cached by the content of its files), then published to
 * the local bucket unless the bucket already holds the same manifest.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { publishPackage } from '../../packages/model-store/src/publish';
import type { S3Location } from '../../packages/model-store/src/s3';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import { MATRIX_KEYS, tensorShapes } from '../../workers/engine/src/model/llama';
import { readManifest, verifyPackage, writePackage } from '../../workers/engine/src/package';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const SHARED_MODELS = resolve(REPO_ROOT, '../shared/models');
export const STORIES_DIR = join(SHARED_MODELS, 'stories260K');

/** Imports stories260K into `dir` unless a package that verifies is already there. */
export async function ensureStoriesPackage(
  dir: string,
  log: (m: string) => void = () => {},
): Promise<string> {
  if (existsSync(join(dir, 'manifest.json'))) {
    try {
      await verifyPackage(dir);
      return dir;
    } catch (err) {
      throw new Error(
        `${dir} holds a package that does not verify (${(err as Error).message}); remove it to re-import`,
      );
    }
  }
  const checkpoint = join(STORIES_DIR, 'stories260K.bin');
  const tokenizer = join(STORIES_DIR, 'tok512.bin');
  if (!existsSync(checkpoint)) throw new Error(`embedded model missing: ${checkpoint}`);
  log(`importing ${checkpoint} into ${dir}`);
  const model = await readLlama2c(checkpoint);
  await writePackage(dir, model, tokenizer, { name: 'stories260K', source: checkpoint });
  return dir;
}

/** Runs the `ppsd` CLI (progress on stderr); rejects on a non-zero exit. */
async function ppsd(args: string[]): Promise<void> {
  const code = await new Promise<number | null>((done) => {
    const child = spawn(join(REPO_ROOT, 'bin/ppsd'), args, { stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('exit', done);
  });
  if (code !== 0) throw new Error(`ppsd ${args.slice(0, 2).join(' ')} exited with ${code}`);
}

// The calibration forward is plain JS (calibrate/forward.ts): models past this many weights get a lighter
// fit so the first start stays in minutes (the head is still fitted on the model's own hidden states).
const LIGHT_CALIBRATION_ABOVE = 50e6;

/**
 * Fits an early-exit head into the package once (`ppsd calibrate` with light settings, about half a
 * minute on 2 cores for stories260K, progress on stderr), so `speculation: {decoder: 'ppsd' | 'eesd'}`
 * on the local stack drafts with a calibrated head instead of the plain logit lens. Skipped when a head
 * is stored.
 */
export async function ensureCalibrated(dir: string, log: (m: string) => void = () => {}): Promise<void> {
  const manifest = await readManifest(dir);
  if (Object.keys(manifest.exitHeads ?? {}).length > 0) return;
  const c = manifest.config;
  const shapes = tensorShapes(c);
  const size = (k: string) => shapes[k][0] * shapes[k][1];
  const weights =
    c.nLayers * MATRIX_KEYS.reduce((n, k) => n + size(k), 0) +
    size('tokenEmbedding') * (c.tiedEmbeddings ? 1 : 2);
  const light = weights > LIGHT_CALIBRATION_ABOVE;
  log(
    `calibrating an early-exit head for ${dir} (once; ppsd calibrate${light ? ', light settings for a large model' : ''})`,
  );
  const settings = light
    ? ['--fit-rows', '1000', '--greedy', '8', '--held-out', '8', '--held-rows', '200']
    : ['--fit-rows', '6000', '--greedy', '60', '--held-out', '30', '--held-rows', '1000'];
  await ppsd(['calibrate', dir, ...settings]);
}

/**
 * sha256 over what a model source is made of: a file's bytes, or each file of a folder (name and bytes,
 * in name order), plus the import settings, so a changed model or setting imports anew.
 */
export async function sourceHash(source: string, settings: string): Promise<string> {
  const h = createHash('sha256').update(`${settings}\n`);
  const files = (await stat(source)).isDirectory()
    ? (await readdir(source))
        .filter((n) => !n.startsWith('.'))
        .sort()
        .map((n) => join(source, n))
    : [source];
  for (const file of files) {
    if (!(await stat(file)).isFile()) continue;
    h.update(`${basename(file)}\n`);
    for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  }
  return h.digest('hex');
}

/** A package name from a source path: its base name without extension, in [A-Za-z0-9._-]. */
export function modelNameOf(source: string): string {
  const base = basename(resolve(source)).replace(/\.(gguf|bin)$/i, '');
  return base.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[-.]+/, '') || 'model';
}

/**
 * The package for `--model <source>`: a package folder is used as it is (after verifying it); a GGUF
 * file, HF folder or llama2.c checkpoint is imported once into `packagesDir/<name>-<hash>` (the hash of
 * its content and `maxSeqLen`), later starts reuse that package.
 */
export async function ensureModelPackage(
  source: string,
  packagesDir: string,
  opts: { maxSeqLen: number; log?: (m: string) => void },
): Promise<{ dir: string; name: string }> {
  const log = opts.log ?? (() => {});
  const src = resolve(source);
  if (!existsSync(src)) throw new Error(`--model ${source}: no such file or folder`);
  if (existsSync(join(src, 'manifest.json'))) {
    const manifest = await verifyPackage(src);
    return { dir: src, name: manifest.name };
  }
  const name = modelNameOf(src);
  log(`hashing ${src} (imports are cached by content)`);
  const hash = (await sourceHash(src, `max-seq-len=${opts.maxSeqLen}`)).slice(0, 12);
  const dir = join(packagesDir, `${name}-${hash}`);
  if (existsSync(join(dir, 'manifest.json'))) {
    await verifyPackage(dir);
    log(`package ${name}: already imported in ${dir}`);
    return { dir, name };
  }
  log(`importing ${src} into ${dir} (once; ppsd import)`);
  await ppsd([
    'import',
    '--from',
    src,
    '--out',
    dir,
    '--name',
    name,
    '--max-seq-len',
    String(opts.maxSeqLen),
  ]);
  return { dir, name };
}

/** Publishes `dir` to `dest` unless the bucket already holds a byte-identical manifest. */
export async function publishIfChanged(
  client: S3Client,
  dir: string,
  dest: S3Location,
  log: (m: string) => void = () => {},
): Promise<boolean> {
  const local = await readFile(join(dir, 'manifest.json'));
  try {
    const res = await client.send(
      new GetObjectCommand({
        Bucket: dest.bucket,
        Key: dest.prefix ? `${dest.prefix}/manifest.json` : 'manifest.json',
      }),
    );
    const remote = Buffer.from((await res.Body?.transformToByteArray()) ?? []);
    if (remote.equals(local)) return false;
  } catch {
    // not there yet
  }
  log(`publishing ${dir} to s3://${dest.bucket}/${dest.prefix}`);
  await publishPackage(client, dir, dest, { verify: verifyPackage });
  return true;
}
