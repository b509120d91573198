/**
 * Model packages through real S3 protocol (s3rver): `ppsd publish` uploads with progress and the manifest
 * last; the worker's pull verifies every file, caches the package and reuses the cache; a package that
 * does not verify is refused with an error naming the file.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../apps/api/src/config';
import { loadModelRegistry } from '../../apps/api/src/models';
import { pullPromptFiles } from '../../apps/api/src/runtime';
import { PackageVerificationError, pullPackage } from '../../packages/model-store/src/package-cache';
import { publishPackage } from '../../packages/model-store/src/publish';
import { parseS3Url } from '../../packages/model-store/src/s3';
import { verifyPackage } from '../../workers/engine/src/package';
import { startS3, type TestS3 } from '../helpers/s3-server';
import { ROOT, storiesPackage } from '../helpers/stack';

let s3: TestS3;
let pkg: { dir: string; cleanup(): Promise<void> };
let cacheDir: string;
const BUCKET = 'ppsd-pkg-test';

beforeAll(async () => {
  s3 = await startS3();
  await s3.createBucket(BUCKET);
  pkg = await storiesPackage();
  cacheDir = await mkdtemp(join(tmpdir(), 'ppsd-cache-'));
});

afterAll(async () => {
  await s3?.stop();
  await pkg?.cleanup();
  if (cacheDir) await rm(cacheDir, { recursive: true, force: true });
});

function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(join(ROOT, 'bin/ppsd'), args, {
      cwd: ROOT,
      env: { ...process.env, NODE_NO_WARNINGS: '1', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('ppsd publish', () => {
  it('verifies and uploads every file, manifest last, with progress on stderr', async () => {
    const r = await runCli([
      'publish',
      pkg.dir,
      `s3://${BUCKET}/models/stories260K`,
      '--endpoint',
      s3.endpoint,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/publish 100%/);
    expect(r.stderr).toMatch(/published 3 files/);
    const listed = await s3.client.send(
      new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'models/stories260K/' }),
    );
    const names = (listed.Contents ?? []).map((o) => o.Key).sort();
    const manifest = JSON.parse(await readFile(join(pkg.dir, 'manifest.json'), 'utf8')) as {
      files: Record<string, unknown>;
    };
    expect(names).toEqual(
      ['manifest.json', ...Object.keys(manifest.files)].map((f) => `models/stories260K/${f}`).sort(),
    );
    const order = r.stderr
      .split('\n')
      .map((l) => /publish \d+%.*\s(\S+)$/.exec(l)?.[1])
      .filter(Boolean);
    expect(order[order.length - 1]).toBe('manifest.json');
  });

  it('refuses a bad destination or a package that does not verify', async () => {
    const bad = await runCli(['publish', pkg.dir, 'http://nope', '--endpoint', s3.endpoint]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/s3:\/\//);
    const missing = await runCli([
      'publish',
      join(pkg.dir, 'nope'),
      `s3://${BUCKET}/x`,
      '--endpoint',
      s3.endpoint,
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/manifest\.json/);
  });
});

describe('package pull', () => {
  const src = { bucket: BUCKET, prefix: 'pull/stories260K' };
  beforeAll(async () => {
    await publishPackage(s3.client, pkg.dir, parseS3Url(`s3://${src.bucket}/${src.prefix}`), {
      verify: verifyPackage,
    });
  });

  it('downloads, verifies and caches; a restart reuses the verified cache', async () => {
    const logs: string[] = [];
    const first = await pullPackage(s3.client, src, {
      cacheDir,
      verify: verifyPackage,
      log: (m) => logs.push(m),
    });
    expect(first.fromCache).toBe(false);
    expect(first.dir.startsWith(join(cacheDir, BUCKET, 'pull/stories260K'))).toBe(true);
    await verifyPackage(first.dir);
    expect(logs.join('\n')).toMatch(/weights\.safetensors .* sha256 ok/);
    const second = await pullPackage(s3.client, src, { cacheDir, verify: verifyPackage });
    expect(second.fromCache).toBe(true);
    expect(second.dir).toBe(first.dir);
    // no staging folders left behind
    const siblings = await readdir(join(cacheDir, BUCKET, 'pull/stories260K'));
    expect(siblings.filter((n) => n.includes('.partial-'))).toEqual([]);
  });

  it('refuses a corrupted object, naming the file, and caches nothing', async () => {
    const prefix = 'corrupt/stories260K';
    await publishPackage(s3.client, pkg.dir, { bucket: BUCKET, prefix });
    const weights = await readFile(join(pkg.dir, 'weights.safetensors'));
    const flipped = Buffer.from(weights);
    flipped[flipped.length - 7] ^= 0xff; // same size, one byte different
    await s3.client.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/weights.safetensors`, Body: flipped }),
    );
    const err = await pullPackage(
      s3.client,
      { bucket: BUCKET, prefix },
      { cacheDir, verify: verifyPackage },
    ).catch((e) => e);
    expect(err).toBeInstanceOf(PackageVerificationError);
    expect(err.file).toBe('weights.safetensors');
    expect(err.message).toMatch(/weights\.safetensors: sha256 mismatch/);
    expect(existsSync(join(cacheDir, BUCKET, prefix))).toBe(true); // only the parent folder
    expect((await readdir(join(cacheDir, BUCKET, prefix))).length).toBe(0);

    // a truncated object is caught from the listing before any download
    await publishPackage(s3.client, pkg.dir, { bucket: BUCKET, prefix });
    const tok = await readFile(join(pkg.dir, 'tokenizer.bin'));
    await s3.client.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/tokenizer.bin`, Body: tok.subarray(0, 100) }),
    );
    const err2 = await pullPackage(s3.client, { bucket: BUCKET, prefix }, { cacheDir }).catch((e) => e);
    expect(err2).toBeInstanceOf(PackageVerificationError);
    expect(err2.file).toBe('tokenizer.bin');
    expect(err2.message).toMatch(/tokenizer\.bin: object is 100 bytes/);
  });

  it('refuses a prefix without a manifest', async () => {
    const err = await pullPackage(s3.client, { bucket: BUCKET, prefix: 'nothing/here' }, { cacheDir }).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(PackageVerificationError);
    expect(err.message).toMatch(/no manifest\.json under s3:\/\/ppsd-pkg-test\/nothing\/here/);
  });
});

describe('API model registry from S3', () => {
  it('pulls only manifest + tokenizer (checksummed) and counts prompt tokens like the engine', async () => {
    const prefix = 'api/stories260K';
    await publishPackage(s3.client, pkg.dir, { bucket: BUCKET, prefix });
    const config = {
      ...defaultConfig({ s3Endpoint: s3.endpoint, cacheDir }),
      models: [{ id: 'stories260K', s3: `s3://${BUCKET}/${prefix}` }],
    };
    const registry = await loadModelRegistry(config, {
      fetchPackage: (m) => pullPromptFiles(m.s3!, config, () => {}),
    });
    const model = registry.get('stories260K')!;
    expect(model.maxContext).toBe(512);
    expect(model.dtype).toBe('f32'); // shown in /v1/models
    expect(await model.countPromptTokens('Once upon a time')).toBe(5); // BOS + 4 pieces
    const pulled = (await readdir(join(cacheDir, BUCKET, prefix)))[0];
    const files = await readdir(join(cacheDir, BUCKET, prefix, pulled));
    expect(files).toContain('tokenizer.bin');
    expect(files).not.toContain('weights.safetensors');

    const tok = await readFile(join(pkg.dir, 'tokenizer.bin'));
    const bad = Buffer.from(tok);
    bad[50] ^= 0xff;
    const badPrefix = 'api-bad/stories260K';
    await publishPackage(s3.client, pkg.dir, { bucket: BUCKET, prefix: badPrefix });
    await s3.client.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: `${badPrefix}/tokenizer.bin`, Body: bad }),
    );
    const badConfig = { ...config, models: [{ id: 'stories260K', s3: `s3://${BUCKET}/${badPrefix}` }] };
    await expect(
      loadModelRegistry(badConfig, { fetchPackage: (m) => pullPromptFiles(m.s3!, badConfig, () => {}) }),
    ).rejects.toThrow(/tokenizer\.bin: sha256 mismatch/);
  });
});
