/**
 * A corrupted object in S3: the worker refuses the package, says which file and why, never becomes
 * ready and exits non-zero; nothing half-downloaded stays in its cache.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { BUCKET, MODEL, type Stack, startStack } from '../helpers/stack';

let stack: Stack;

beforeAll(async () => {
  stack = await startStack({ api: false, workers: 0 });
});

afterAll(async () => {
  await stack?.stop();
});

it('refuses a package whose weights were corrupted in S3 and says why', async () => {
  const weights = await readFile(join(stack.packageDir, 'weights.safetensors'));
  const bad = Buffer.from(weights);
  bad[Math.floor(bad.length / 2)] ^= 0x5a;
  await stack.s3.client.send(
    new PutObjectCommand({ Bucket: BUCKET, Key: `${MODEL}/weights.safetensors`, Body: bad }),
  );

  const w = await stack.startWorker({ waitReady: false });
  const exit = await Promise.race([w.exited, new Promise<null>((r) => setTimeout(() => r(null), 60_000))]);
  expect(exit, w.output).not.toBeNull();
  expect(exit?.code).toBe(1);
  const fatal = w.logs().find((l) => l.level === 'fatal');
  expect(fatal?.msg, w.output).toMatch(/^start-up failed: weights\.safetensors: sha256 mismatch/);
  expect(fatal).toMatchObject({ service: 'worker', workerId: expect.any(String) });
  expect(await stack.readyWorkers()).toHaveLength(0);
  const cached = await readdir(join(stack.cacheDir, BUCKET, MODEL)).catch(() => []);
  expect(cached).toEqual([]);
});
