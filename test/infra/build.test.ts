/**
 * The production bundles (`npm run build`, esbuild): the API bundle serves from plain JavaScript, counts
 * prompt tokens on its bundled thread and admits a job; the Lambda bundles export their handlers.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import { runPpsd, scratchDir } from '../helpers/shared';

const ROOT = join(import.meta.dirname, '..', '..');
const KEY = `sk-build-${randomBytes(32).toString('base64url')}`;
let redis: RedisServer;
let api: ChildProcess | undefined;

beforeAll(async () => {
  const built = spawnSync('npm', ['run', 'build'], { cwd: ROOT, encoding: 'utf8' });
  expect(built.status, built.stderr).toBe(0);
  redis = await startRedis();
}, 180_000);
afterAll(async () => {
  api?.kill('SIGKILL');
  await redis?.stop();
});

it('dist/api/server.js serves, counts tokens on dist/api/thread.js and admits a job', async () => {
  for (const f of [
    'api/server.js',
    'api/thread.js',
    'api/lambda.js',
    'worker/main.js',
    'worker/stage-worker.js',
  ])
    expect(existsSync(join(ROOT, 'dist', f)), f).toBe(true);
  const { dir } = await scratchDir('ppsd-build-');
  const pkg = join(dir, 'stories260K');
  const imported = await runPpsd(
    'import',
    '--from',
    join(ROOT, '../shared/models/stories260K/stories260K.bin'),
    '--tokenizer',
    join(ROOT, '../shared/models/stories260K/tok512.bin'),
    '--out',
    pkg,
  );
  expect(imported.code, imported.stderr).toBe(0);
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  let log = '';
  api = spawn(process.execPath, ['dist/api/server.js'], {
    cwd: ROOT,
    env: {
      ...process.env,
      PORT: String(port),
      HOST: '127.0.0.1',
      PPSD_REDIS_URL: redis.url,
      PPSD_MODELS: `stories260K=${pkg}`,
      PPSD_BOOTSTRAP_KEYS: `acme:${KEY}`,
      PPSD_KEY_SECRET: randomBytes(32).toString('base64url'),
    },
  });
  api.stderr?.on('data', (d) => {
    log += d;
  });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${base}/readyz`)).status > 0) break;
    } catch {}
    if (i > 300) throw new Error(`bundle did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const res = await fetch(`${base}/v1/jobs`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 4 }),
  });
  expect(res.status, log).toBe(202);
  const { id } = (await res.json()) as { id: string };
  const view = (await (
    await fetch(`${base}/v1/jobs/${id}`, { headers: { Authorization: `Bearer ${KEY}` } })
  ).json()) as {
    usage: { prompt_tokens: number };
  };
  expect(view.usage.prompt_tokens).toBe(5); // BOS + 4 pieces, counted by the bundled thread
  // the console's files are found from the bundle too (and its script is bundled on demand)
  expect((await fetch(`${base}/console`)).status).toBe(200);
  const script = await fetch(`${base}/console/app.js`);
  expect(script.status, log).toBe(200);
  expect((await script.text()).length).toBeGreaterThan(1000);
}, 60_000);

it('the Lambda bundles export their handlers', async () => {
  const check = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      'globalThis.awslambda = { streamifyResponse: (f) => f, HttpResponseStream: { from: (s) => s } };' +
        "const a = await import('./dist/api/lambda.js'); const b = await import('./dist/autoscaler/lambda.js');" +
        'console.log(typeof a.handler, typeof b.handler);',
    ],
    { cwd: ROOT, encoding: 'utf8' },
  );
  expect(check.stderr).toBe('');
  expect(check.stdout.trim()).toBe('function function');
});
