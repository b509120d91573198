/**
 * `npm start [-- --model <GGUF file | HF folder | llama2.c checkpoint | package folder>]`: the whole local
 * stack in the foreground, on the embedded stories260K model or on the model given.
 *
 *   redis-server (Debian's; installed if missing)  127.0.0.1:6379, AOF on, noeviction, data .data/redis
 *   s3rver (S3 protocol)                            127.0.0.1:4569, data .data/s3, bucket ppsd-models
 *   the model package                               .data/packages/stories260K -> s3://ppsd-models/stories260K
 *                                                   (--model: imported once into .data/packages/<name>-<hash>,
 *                                                   calibrated, published as s3://ppsd-models/<name>)
 *   the API                                         $HOST:$PORT (default 127.0.0.1:8080)
 *   one GPU worker (on CPU here)                    package cache .data/cache
 *
 * Ctrl-C (or SIGTERM) stops it all cleanly: the worker drains first and the API closes, then Redis shuts
 * down (AOF flushed) and s3rver closes. Children run in their own process groups so the terminal's
 * Ctrl-C reaches only this script, which stops them in that order.
 *
 * Environment: PORT, HOST, PPSD_BOOTSTRAP_KEYS ("acme:KEY1,globex:KEY2"; none: one key is created,
 * kept in .data/bootstrap-key and printed), PPSD_ADMIN_KEYS (none: one admin key is created, kept in
 * .data/admin-key and printed the first time only), PPSD_KEY_SECRET (none: one is generated and kept in
 * .data/key-secret), PPSD_REDIS_PORT, PPSD_S3_PORT, PPSD_DATA_DIR,
 * PPSD_LOCAL_MODEL (= --model), PPSD_LOCAL_MAX_SEQ_LEN (context a --model import serves, default 4096),
 * PPSD_LOG_FORMAT (`pretty`, the default: the API's and the worker's JSON log lines are printed as
 * `12:00:01.234 INFO  [worker w1 job_x#1] msg k=v`; `json`: passed through as they are), PPSD_LOG_LEVEL.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { CreateBucketCommand, HeadBucketCommand } from '@aws-sdk/client-s3';
import { generateApiKey, keyWeakness } from '@ppsd/contract';
import { prettyLogLine } from '@ppsd/contract/log';
import S3rver from 's3rver';
import { makeS3Client } from '../../packages/model-store/src/s3';
import {
  ensureCalibrated,
  ensureModelPackage,
  ensureStoriesPackage,
  publishIfChanged,
  REPO_ROOT,
} from './seed';

const DEFAULT_MODEL = 'stories260K';
const BUCKET = 'ppsd-models';
const DATA = resolve(REPO_ROOT, process.env.PPSD_DATA_DIR ?? '.data');
const PORT = Number(process.env.PORT ?? 8080);
const HOST = process.env.HOST ?? '127.0.0.1';
const REDIS_PORT = Number(process.env.PPSD_REDIS_PORT ?? 6379);
const S3_PORT = Number(process.env.PPSD_S3_PORT ?? 4569);
// the served context of a --model import: sizes the worker's KV cache (Llama 3.1's 131072 positions
// would be gigabytes per layer); `ppsd import --max-seq-len` records it in the package
const LOCAL_MAX_SEQ_LEN = Number(process.env.PPSD_LOCAL_MAX_SEQ_LEN ?? 4096);

/** `--model PATH` (or `--model=PATH`) from the command line, else PPSD_LOCAL_MODEL. */
function modelArg(argv: string[]): string | undefined {
  if (argv.length === 0) return process.env.PPSD_LOCAL_MODEL?.trim() || undefined;
  const [flag, value] = argv[0].startsWith('--model=') ? ['--model', argv[0].slice(8)] : argv;
  if (flag !== '--model' || argv.length > (argv[0] === '--model' ? 2 : 1))
    throw new Error(`unknown arguments '${argv.join(' ')}' (npm start -- --model <path>)`);
  if (!value) throw new Error('--model needs a path (GGUF file, HF folder, llama2.c checkpoint or package)');
  return value;
}

const log = (msg: string) => console.error(`[local] ${msg}`);
const PRETTY = (process.env.PPSD_LOG_FORMAT ?? 'pretty').trim().toLowerCase() !== 'json';

/** Copies a child's output line by line, JSON log lines pretty-printed unless PPSD_LOG_FORMAT=json. */
function relayLines(from: Readable | null, to: Writable): void {
  if (!from) return;
  if (!PRETTY) {
    from.pipe(to, { end: false });
    return;
  }
  createInterface({ input: from, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (line) =>
    to.write(`${prettyLogLine(line)}\n`),
  );
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function portInUse(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
}

function haveRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

function ensureRedisServer(): void {
  if (haveRedisServer()) return;
  log(
    "redis-server is not installed: installing Debian's redis-server (apt-get install -y redis-server) ...",
  );
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  try {
    execFileSync(
      sudo[0] ?? 'apt-get',
      [...sudo.slice(1), ...(sudo.length ? ['apt-get'] : []), 'update', '-qq'],
      {
        stdio: 'inherit',
      },
    );
    execFileSync(
      sudo[0] ?? 'apt-get',
      [...(sudo.length ? ['apt-get'] : []), 'install', '-y', '-qq', 'redis-server'],
      {
        stdio: 'inherit',
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      },
    );
  } catch {
    throw new Error(
      'could not install redis-server. Install it yourself (Debian/Ubuntu: sudo apt-get install -y redis-server) and run npm start again.',
    );
  }
  if (!haveRedisServer()) throw new Error('redis-server still not found on PATH after installing it');
}

interface Child {
  name: string;
  proc: ChildProcess;
  exited: Promise<number | null>;
  /** Unexpected exits so far without a minute of uptime in between (drives the restart backoff). */
  crashes: number;
}

const children: Child[] = [];
let stopping = false;

/** Restart backoff: 1 s, 2 s, 4 s ... at most 30 s; a child that ran a minute starts over at 1 s. */
const restartDelayMs = (crashes: number) => Math.min(30_000, 1_000 * 2 ** Math.max(0, crashes - 1));
const HEALTHY_UPTIME_MS = 60_000;

/**
 * Runs a child in its own process group. `restart`: an unexpected exit restarts it with backoff (the
 * API and the worker: a dead worker's jobs come back to the queue, and the stack keeps serving);
 * otherwise (Redis) an unexpected exit stops the whole stack.
 */
function startChild(
  name: string,
  cmd: string,
  args: string[],
  env: Record<string, string>,
  opts: { restart?: boolean } = {},
): Child {
  const child = { name, crashes: 0 } as Child;
  const launch = () => {
    const startedAt = Date.now();
    child.proc = spawn(cmd, args, {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // own process group: Ctrl-C reaches only this script, which stops children in order
    });
    relayLines(child.proc.stdout, process.stdout);
    relayLines(child.proc.stderr, process.stderr);
    child.exited = new Promise<number | null>((res) =>
      child.proc.once('exit', (code, signal) => {
        res(code);
        if (stopping) return;
        if (!opts.restart) {
          log(`${name} exited unexpectedly (${signal ?? code}); stopping the stack`);
          void shutdown(1);
          return;
        }
        child.crashes = Date.now() - startedAt >= HEALTHY_UPTIME_MS ? 1 : child.crashes + 1;
        const delay = restartDelayMs(child.crashes);
        log(`${name} exited unexpectedly (${signal ?? code}); restarting it in ${delay / 1000} s`);
        setTimeout(() => {
          if (!stopping) launch();
        }, delay).unref();
      }),
    );
  };
  launch();
  children.push(child);
  return child;
}

async function stopChild(c: Child | undefined, graceMs: number): Promise<void> {
  if (!c || c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  c.proc.kill('SIGTERM');
  const timer = setTimeout(() => {
    log(`${c.name} did not stop within ${graceMs / 1000} s: killing it`);
    c.proc.kill('SIGKILL');
  }, graceMs);
  await c.exited;
  clearTimeout(timer);
}

let s3server: S3rver | null = null;
let redisChild: Child | undefined;
let apiChild: Child | undefined;
let workerChild: Child | undefined;

async function shutdown(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  log('stopping: worker (drain) and API first ...');
  await Promise.all([stopChild(workerChild, 60_000), stopChild(apiChild, 30_000)]);
  log('stopping Redis (AOF flushed) and S3 ...');
  await stopChild(redisChild, 15_000);
  await s3server?.close().catch(() => {});
  log('stopped');
  process.exit(code);
}

function bootstrapKeys(): { spec: string; printed: { tenant: string; key: string }[]; generated: boolean } {
  const given = process.env.PPSD_BOOTSTRAP_KEYS?.trim();
  if (given) {
    const printed = given.split(',').map((p) => {
      const i = p.indexOf(':');
      return { tenant: p.slice(0, i).trim(), key: p.slice(i + 1).trim() };
    });
    return { spec: given, printed, generated: false };
  }
  const file = join(DATA, 'bootstrap-key');
  let key = existsSync(file) ? readFileSync(file, 'utf8').trim() : '';
  if (key && keyWeakness(key)) {
    log(`${file} holds a key below the strength the API requires: replacing it with a new one`);
    key = '';
  }
  if (!key) {
    key = generateApiKey();
    writeFileSync(file, `${key}\n`, { mode: 0o600 });
  }
  return { spec: `local:${key}`, printed: [{ tenant: 'local', key }], generated: true };
}

/** PPSD_KEY_SECRET, or one generated on first start and kept in .data/key-secret. */
function keySecret(): string {
  const given = process.env.PPSD_KEY_SECRET?.trim();
  if (given) return given;
  const file = join(DATA, 'key-secret');
  const kept = existsSync(file) ? readFileSync(file, 'utf8').trim() : '';
  if (kept) return kept;
  const secret = randomBytes(32).toString('base64url');
  writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  log(`generated the API key secret (PPSD_KEY_SECRET) in ${file}`);
  return secret;
}

/**
 * PPSD_ADMIN_KEYS, or the admin key of .data/admin-key: created (and printed, that once) on first start.
 * `printed` is the key to show now, or undefined when it was shown before.
 */
function adminKeys(): { spec: string; printed?: string; file?: string } {
  const given = process.env.PPSD_ADMIN_KEYS?.trim();
  if (given) return { spec: given };
  const file = join(DATA, 'admin-key');
  const kept = existsSync(file) ? readFileSync(file, 'utf8').trim() : '';
  if (kept) return { spec: kept, file };
  const key = generateApiKey('admin');
  writeFileSync(file, `${key}\n`, { mode: 0o600 });
  return { spec: key, printed: key, file };
}

async function waitUntil(what: string, fn: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn().catch(() => false))) {
    if (stopping) throw new Error('stopping');
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function main(): Promise<void> {
  process.on('SIGINT', () => void shutdown(0));
  process.on('SIGTERM', () => void shutdown(0));
  process.on('exit', () => {
    for (const c of children)
      if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
  });
  for (const d of ['redis', 's3', 'packages', 'cache']) mkdirSync(join(DATA, d), { recursive: true });

  // Redis
  ensureRedisServer();
  if (await portInUse(REDIS_PORT)) {
    throw new Error(`port ${REDIS_PORT} is already in use (another Redis?). Stop it or set PPSD_REDIS_PORT.`);
  }
  redisChild = startChild('redis-server', 'redis-server', [
    '--port', String(REDIS_PORT), '--bind', '127.0.0.1', '--dir', join(DATA, 'redis'),
    '--appendonly', 'yes', '--appendfsync', 'everysec', '--maxmemory-policy', 'noeviction',
    '--protected-mode', 'no', '--daemonize', 'no', '--loglevel', 'warning',
  ], {}); // biome-ignore format: one flag per pair reads better
  await waitUntil('redis-server', () => portInUse(REDIS_PORT), 15_000);
  const redisUrl = `redis://127.0.0.1:${REDIS_PORT}`;
  log(`redis-server on ${redisUrl} (AOF, noeviction; data ${join(DATA, 'redis')})`);

  // S3
  if (await portInUse(S3_PORT))
    throw new Error(`port ${S3_PORT} is already in use. Free it or set PPSD_S3_PORT.`);
  s3server = new S3rver({ address: '127.0.0.1', port: S3_PORT, silent: true, directory: join(DATA, 's3') });
  await s3server.run();
  const s3Endpoint = `http://127.0.0.1:${S3_PORT}`;
  const s3 = makeS3Client({ endpoint: s3Endpoint });
  try {
    await s3.send(new HeadBucketCommand({ Bucket: BUCKET }));
  } catch {
    await s3.send(new CreateBucketCommand({ Bucket: BUCKET }));
  }
  log(`S3 (s3rver) on ${s3Endpoint}, bucket ${BUCKET} (data ${join(DATA, 's3')})`);

  // the package: the embedded default, or --model imported once
  const source = modelArg(process.argv.slice(2));
  let model = DEFAULT_MODEL;
  let pkgDir = join(DATA, 'packages', DEFAULT_MODEL);
  if (source) {
    if (!(Number.isInteger(LOCAL_MAX_SEQ_LEN) && LOCAL_MAX_SEQ_LEN > 0))
      throw new Error(
        `PPSD_LOCAL_MAX_SEQ_LEN must be a positive integer, got ${process.env.PPSD_LOCAL_MAX_SEQ_LEN}`,
      );
    ({ dir: pkgDir, name: model } = await ensureModelPackage(source, join(DATA, 'packages'), {
      maxSeqLen: LOCAL_MAX_SEQ_LEN,
      log,
    }));
  } else await ensureStoriesPackage(pkgDir, log);
  await ensureCalibrated(pkgDir, log);
  const published = await publishIfChanged(s3, pkgDir, { bucket: BUCKET, prefix: model }, log);
  log(`package ${model}: ${published ? 'published to' : 'already in'} s3://${BUCKET}/${model}`);
  s3.destroy();

  // API and worker
  const keys = bootstrapKeys();
  const admin = adminKeys();
  const tsx = [process.execPath, '--import', 'tsx'];
  apiChild = startChild(
    'api',
    tsx[0],
    [...tsx.slice(1), 'apps/api/src/server.ts'],
    {
      PORT: String(PORT),
      HOST,
      PPSD_REDIS_URL: redisUrl,
      PPSD_MODELS: `${model}=${pkgDir}`,
      PPSD_BOOTSTRAP_KEYS: keys.spec,
      PPSD_ADMIN_KEYS: admin.spec,
      PPSD_KEY_SECRET: keySecret(),
    },
    { restart: true },
  );
  workerChild = startChild(
    'worker',
    tsx[0],
    [...tsx.slice(1), 'workers/gpu-worker/src/main.ts'],
    {
      PPSD_REDIS_URL: redisUrl,
      PPSD_MODEL: model,
      PPSD_S3_BUCKET: BUCKET,
      PPSD_S3_PREFIX: model,
      PPSD_S3_ENDPOINT: s3Endpoint,
      AWS_REGION: process.env.AWS_REGION ?? 'us-east-1',
      PPSD_CACHE_DIR: join(DATA, 'cache'),
      PPSD_DEVICES: process.env.PPSD_DEVICES ?? 'cpu',
    },
    { restart: true },
  );
  const url = `http://${HOST === '0.0.0.0' ? '127.0.0.1' : HOST}:${PORT}`;
  await waitUntil('the API and a ready worker', async () => (await fetch(`${url}/readyz`)).ok, 120_000);

  const key = keys.printed[0].key;
  const lines = [
    '',
    `ppsd is up: ${url}  (model ${model}; Ctrl-C stops everything)`,
    ...keys.printed.map(
      (k) =>
        `  tenant ${k.tenant}  key ${k.key}${keys.generated ? '  (created; kept in .data/bootstrap-key)' : ''}`,
    ),
    admin.printed
      ? `  admin key ${admin.printed}  (created; shown this once, kept in ${admin.file})`
      : admin.file
        ? `  admin key in ${admin.file}`
        : '  admin keys from PPSD_ADMIN_KEYS',
    `  console   ${url}/console`,
    '',
    'try:',
    `  curl -N ${url}/v1/chat/completions -H 'Authorization: Bearer ${key}' -H 'Content-Type: application/json' \\`,
    `    -d '{"model":"${model}","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":64,"stream":true}'`,
    '',
  ];
  console.log(lines.join('\n'));
}

main().catch(async (err: unknown) => {
  if (stopping) return;
  log(`failed to start: ${err instanceof Error ? err.message : String(err)}`);
  await shutdown(1);
});
