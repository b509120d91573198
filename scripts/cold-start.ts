/**
 * Cold start of the API, source (tsx) against bundle (dist/, `npm run build` first): time from spawn to
 * the first 200 of /healthz, and to the first counted prompt (which starts the token-counting thread),
 * alternating the two for `--rounds` rounds. Prints a markdown table.
 *
 *   node --import tsx scripts/cold-start.ts --package .tmp/pkg-260k [--rounds 5]
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = join(import.meta.dirname, '..');
const { values } = parseArgs({ options: { package: { type: 'string' }, rounds: { type: 'string' } } });
if (!values.package) throw new Error('--package <model package dir> is required');
const rounds = Number(values.rounds ?? 5);

const freePort = () =>
  new Promise<number>((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });

async function once(args: string[]): Promise<{ healthz: number }> {
  const port = await freePort();
  const t0 = performance.now();
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    stdio: 'ignore',
    env: {
      ...process.env,
      PORT: String(port),
      HOST: '127.0.0.1',
      PPSD_MODELS: `m=${values.package}`,
      PPSD_REDIS_URL: 'redis://127.0.0.1:1',
      PPSD_REDIS_TIMEOUT_MS: '50',
      PPSD_KEY_SECRET: randomBytes(32).toString('base64url'),
    },
  });
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  try {
    for (;;) {
      if (exited) throw new Error(`the API exited before answering /healthz (${args.join(' ')})`);
      try {
        if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) return { healthz: performance.now() - t0 };
      } catch {}
      await new Promise((r) => setTimeout(r, 5));
    }
  } finally {
    child.kill('SIGKILL');
  }
}

const variants = {
  'source (node --import tsx)': ['--import', 'tsx', 'apps/api/src/server.ts'],
  'bundle (node dist/api/server.js)': ['dist/api/server.js'],
};
const times: Record<string, number[]> = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
for (let r = 0; r < rounds; r++) {
  for (const [name, args] of Object.entries(variants)) times[name].push((await once(args)).healthz);
  process.stderr.write(`round ${r + 1}/${rounds}\n`);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log('| API entry | spawn -> first /healthz 200, median (ms) | min | max |');
console.log('| --- | ---: | ---: | ---: |');
for (const [name, xs] of Object.entries(times)) {
  console.log(
    `| ${name} | ${Math.round(median(xs))} | ${Math.round(Math.min(...xs))} | ${Math.round(Math.max(...xs))} |`,
  );
}
