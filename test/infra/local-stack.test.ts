/**
 * `npm start` (infra/local/start.ts) as a user runs it, in its own data folder and ports: it comes up on
 * the embedded default, restarts a worker that dies (logged, with backoff) instead of stopping, the new
 * worker serves, and Ctrl-C (SIGINT) stops everything. (/readyz turning 503 when no worker is alive is
 * checked in test/service/faults-worker.test.ts; here the restarted worker may be ready before the dead
 * one's heartbeat goes stale.)
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const KEY = `sk-local-${randomBytes(32).toString('base64url')}`;
const data = mkdtempSync(join(tmpdir(), 'ppsd-local-'));
const base = 21_000 + Math.floor(Math.random() * 9_000);
const ports = { api: base, redis: base + 1, s3: base + 2 };
let stack: ChildProcess | undefined;
let out = '';

afterAll(() => {
  // children run in their own process groups: kill them by pid, then the script
  if (stack?.pid && stack.exitCode === null) {
    try {
      for (const pid of childPids('')) process.kill(pid, 'SIGKILL');
    } catch {} // no children left
    process.kill(-stack.pid, 'SIGKILL');
  }
  rmSync(data, { recursive: true, force: true });
});

async function until(what: string, fn: () => Promise<boolean> | boolean, ms: number) {
  const deadline = Date.now() + ms;
  while (!(await Promise.resolve(fn()).catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${out.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Pids of the stack's direct children whose command line contains `needle`. */
function childPids(needle: string): number[] {
  const ps = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(stack!.pid)], { encoding: 'utf8' });
  return ps
    .split('\n')
    .filter((l) => l.includes(needle))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

it('restarts a dead worker and keeps serving', async () => {
  stack = spawn(process.execPath, ['--import', 'tsx', 'infra/local/start.ts'], {
    cwd: ROOT,
    detached: true,
    env: {
      ...process.env,
      PPSD_DATA_DIR: data,
      PORT: String(ports.api),
      PPSD_REDIS_PORT: String(ports.redis),
      PPSD_S3_PORT: String(ports.s3),
      PPSD_BOOTSTRAP_KEYS: `local:${KEY}`,
    },
  });
  stack.stdout?.on('data', (d) => {
    out += d;
  });
  stack.stderr?.on('data', (d) => {
    out += d;
  });
  const url = `http://127.0.0.1:${ports.api}`;
  await until('ppsd is up', () => out.includes('ppsd is up'), 240_000);

  const [worker] = childPids('gpu-worker/src/main.ts');
  expect(worker).toBeGreaterThan(0);
  process.kill(worker, 'SIGKILL');
  await until(
    'the restart is logged',
    () => /worker exited unexpectedly \(SIGKILL\); restarting it in 1 s/.test(out),
    10_000,
  );
  await until('a new worker', () => childPids('gpu-worker/src/main.ts').some((p) => p !== worker), 15_000);
  await until('readyz 200 again', async () => (await fetch(`${url}/readyz`)).ok, 120_000);

  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8 }),
  });
  expect(res.status).toBe(200);
  expect(((await res.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(8);
  expect(out).not.toMatch(/stopping the stack/);

  process.kill(-stack.pid!, 'SIGINT');
  await until('stopped', () => stack!.exitCode !== null, 90_000);
  expect(stack.exitCode).toBe(0);
}, 420_000);
