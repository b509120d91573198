/**
 * Seeding the local stack: the embedded stories260K checkpoint (../shared/models/stories260K) imported
 * into a model package with the engine's own library calls (what `ppsd import` does), then published to
 * the local bucket unless the bucket already holds the same manifest.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { publishPackage } from '../../packages/model-store/src/publish';
import type { S3Location } from '../../packages/model-store/src/s3';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
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

/**
 * Fits an early-exit head into the package once (`ppsd calibrate` with light settings, about half a
 * minute on 2 cores, progress on stderr), so `speculation: {decoder: 'ppsd' | 'eesd'}` on the local
 * stack drafts with a calibrated head instead of the plain logit lens. Skipped when a head is stored.
 */
export async function ensureCalibrated(dir: string, log: (m: string) => void = () => {}): Promise<void> {
  const manifest = await readManifest(dir);
  if (Object.keys(manifest.exitHeads ?? {}).length > 0) return;
  log(`calibrating an early-exit head for ${dir} (once; ppsd calibrate)`);
  const args = [
    'calibrate',
    dir,
    '--fit-rows',
    '6000',
    '--greedy',
    '60',
    '--held-out',
    '30',
    '--held-rows',
    '1000',
  ];
  const code = await new Promise<number | null>((done) => {
    const child = spawn(join(REPO_ROOT, 'bin/ppsd'), args, { stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('exit', done);
  });
  if (code !== 0) throw new Error(`ppsd calibrate ${dir} exited with ${code}`);
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
