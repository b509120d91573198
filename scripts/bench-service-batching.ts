/**
 * Service batching benchmark: N concurrent streaming completions through API + BullMQ + worker on the
 * default local stack (stories260K, one worker, PPSD_MAX_BATCH = the largest N), TTFT, ITL, tokens/s; and
 * the batching check: 16 greedy completions sent one by one, then all at once, must return the same texts,
 * and the concurrent ones should finish in at most a quarter of the time.
 *
 *   node --import tsx scripts/bench-service-batching.ts [--concurrency 1,4,16,64] [--tokens 128] [--write]
 *
 * Writes docs/bench/service-batching.json and, with --write, the service-batching section of
 * docs/BENCHMARKS.md.
 */
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MODEL, ROOT, readSse, startStack, waitFor } from '../test/helpers/stack';
import { replaceSection, sectionMarkers } from './doc-section';

const { values } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '1,4,16,64' },
    tokens: { type: 'string', default: '128' },
    write: { type: 'boolean', default: false },
  },
});
const CONCURRENCY = values.concurrency.split(',').map(Number);
const TOKENS = Number(values.tokens);
const MAX_N = Math.max(...CONCURRENCY, 16);
const OPENERS = ['Once upon a time', 'Lily went to the park', 'Tom had a big red ball', 'The sun was hot'];
const prompt = (i: number) =>
  `${OPENERS[i % OPENERS.length]}${' and then'.repeat(Math.floor(i / OPENERS.length))}`;
const log = (m: string) => process.stderr.write(`[bench-service-batching] ${m}\n`);

const pct = (xs: number[], p: number): number => {
  if (!xs.length) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};

interface Completion {
  text: string;
  tokens: number;
  ttft: number;
  gaps: number[];
}

async function complete(url: string, key: string, text: string): Promise<Completion> {
  const t0 = performance.now();
  let last = 0;
  const out: Completion = { text: '', tokens: 0, ttft: 0, gaps: [] };
  const r = await readSse(`${url}/v1/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({
      model: MODEL,
      prompt: text,
      max_tokens: TOKENS,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
    onMessage: (m) => {
      if (m.data === '[DONE]') return;
      const chunk = JSON.parse(m.data);
      if (chunk.usage) out.tokens = chunk.usage.completion_tokens;
      const piece = chunk.choices?.[0]?.text;
      if (!piece) return;
      const now = performance.now();
      if (!out.ttft) out.ttft = now - t0;
      else out.gaps.push(now - last);
      last = now;
      out.text += piece;
    },
  });
  if (r.status !== 200) throw new Error(`completion failed: HTTP ${r.status}`);
  return out;
}

async function concurrent(url: string, key: string, n: number) {
  const t0 = performance.now();
  const all = await Promise.all(Array.from({ length: n }, (_, i) => complete(url, key, prompt(i))));
  const seconds = (performance.now() - t0) / 1000;
  const tokens = all.reduce((s, c) => s + c.tokens, 0);
  return {
    n,
    seconds,
    tokens,
    tokPerS: tokens / seconds,
    ttftP50: pct(
      all.map((c) => c.ttft),
      50,
    ),
    itlP50: pct(
      all.flatMap((c) => c.gaps),
      50,
    ),
    itlP99: pct(
      all.flatMap((c) => c.gaps),
      99,
    ),
    texts: all.map((c) => c.text),
  };
}

/** utime + stime of a /proc stat file, in seconds. */
function statSeconds(path: string): number {
  const tick = 100; // USER_HZ on Linux
  const st = readFileSync(path, 'utf8');
  const f = st.slice(st.lastIndexOf(') ') + 2).split(' '); // the name may hold spaces
  return (Number(f[11]) + Number(f[12])) / tick;
}

/**
 * CPU seconds (user + system) so far of the worker, the API, Redis and this client process. The
 * worker's are also split: its main thread (token publishing, job locks, the queue) and the rest (the
 * engine thread, whose batched steps are the compute, and Node's helper threads).
 */
async function cpuSeconds(stack: Awaited<ReturnType<typeof startStack>>): Promise<Record<string, number>> {
  const proc = (pid: number | undefined) => (pid ? statSeconds(`/proc/${pid}/stat`) : Number.NaN);
  const workerPid = stack.workers[0]?.child.pid;
  const info = String(await stack.client.info('cpu'));
  const num = (k: string) => Number(new RegExp(`${k}:([\\d.]+)`).exec(info)?.[1] ?? Number.NaN);
  const me = process.cpuUsage();
  const worker = proc(workerPid);
  const workerMain = workerPid ? statSeconds(`/proc/${workerPid}/task/${workerPid}/stat`) : Number.NaN;
  return {
    worker,
    workerMain,
    workerOtherThreads: worker - workerMain,
    api: proc(stack.api?.child.pid),
    redis: num('used_cpu_user') + num('used_cpu_sys'),
    client: (me.user + me.system) / 1e6,
  };
}

/**
 * Redis commands since the last CONFIG RESETSTAT that carry the job streams: script calls (the worker's
 * event writes; BullMQ's and the usage scripts count too), stream reads (the API's followers and job
 * views) and PUBLISH (one wake-up per stream entry, so about the number of entries written).
 */
async function streamCommands(
  stack: Awaited<ReturnType<typeof startStack>>,
): Promise<Record<string, number>> {
  const info = String(await stack.client.info('commandstats'));
  const calls = (cmd: string) => Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(info)?.[1] ?? 0);
  return {
    scriptCalls: calls('evalsha') + calls('eval'),
    reads: calls('xrange') + calls('xread'),
    publish: calls('publish'),
  };
}

async function main(): Promise<void> {
  const load0 = loadavg();
  log(`starting the stack (redis, s3rver, API, 1 worker with PPSD_MAX_BATCH=${MAX_N}) ...`);
  const stack = await startStack({
    workers: 1,
    workerEnv: { PPSD_MAX_BATCH: String(MAX_N) },
    apiEnv: { PPSD_TENANT_MAX_JOBS: String(MAX_N * 2) },
    redisConfig: { appendfsync: 'everysec' },
  });
  try {
    await waitFor('API ready', async () => (await fetch(`${stack.apiUrl}/readyz`)).ok, 60_000);
    for (let i = 0; i < 3; i++) await concurrent(stack.apiUrl, stack.apiKey, 4); // warm-up
    const rows = [];
    for (const n of CONCURRENCY) {
      log(`${n} concurrent completions`);
      const r = await concurrent(stack.apiUrl, stack.apiKey, n);
      rows.push(r);
    }
    log('16 one by one, then 16 at once');
    const t0 = performance.now();
    const oneByOne: string[] = [];
    for (let i = 0; i < 16; i++) oneByOne.push((await complete(stack.apiUrl, stack.apiKey, prompt(i))).text);
    const sequentialSeconds = (performance.now() - t0) / 1000;
    const cpu0 = await cpuSeconds(stack);
    await stack.client.config('RESETSTAT');
    const together = await concurrent(stack.apiUrl, stack.apiKey, 16);
    const redisCommands = await streamCommands(stack);
    const cpu1 = await cpuSeconds(stack);
    const cpu = Object.fromEntries(Object.keys(cpu0).map((k) => [k, cpu1[k] - cpu0[k]]));
    const same = together.texts.every((t, i) => t === oneByOne[i]);
    const check = {
      same,
      sequentialSeconds,
      concurrentSeconds: together.seconds,
      cpuSeconds: cpu,
      redisCommands,
    };
    const result = {
      when: new Date().toISOString(),
      cpu: cpus()[0]?.model,
      cpus: cpus().length,
      node: process.version,
      load0,
      load1: loadavg(),
      rows: rows.map(({ texts, ...r }) => r),
      check,
    };
    log(JSON.stringify(result));
    const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
    const md = [
      sectionMarkers(MARKER).start,
      '## Batching through the service (API + queue + worker)',
      '',
      `\`node --import tsx scripts/bench-service-batching.ts --concurrency ${CONCURRENCY.join(',')} --tokens ${TOKENS} --write\``,
      '',
      `The default local stack on loopback (redis-server, s3rver, the API, one worker with PPSD_MAX_BATCH=${MAX_N}, all on this machine's ${result.cpus} cores: ${result.cpu ?? 'CPU'}), stories260K (real weights; about 1 ms of compute per token, so the service's own costs weigh more than at a realistic size), greedy, max_tokens ${TOKENS}, streaming; N requests sent at once, distinct prompts. ITL: gaps between SSE text chunks, over all requests. ${result.when.slice(0, 16)}Z; load average before ${load0.map((x) => x.toFixed(2)).join(' ')}.`,
      '',
      '| N | tokens | wall s | tokens/s | TTFT p50 ms | ITL p50 ms | ITL p99 ms |',
      '|---|---|---|---|---|---|---|',
      ...rows.map(
        (r) =>
          `| ${r.n} | ${r.tokens} | ${f(r.seconds, 2)} | ${f(r.tokPerS)} | ${f(r.ttftP50, 0)} | ${f(r.itlP50)} | ${f(r.itlP99)} |`,
      ),
      '',
      `16 greedy completions one by one: ${f(sequentialSeconds, 2)} s; the same 16 at once: ${f(together.seconds, 2)} s (**${f(sequentialSeconds / together.seconds, 2)}x** sooner, target >= 4x); same texts: **${same ? 'yes' : 'NO'}**.`,
      '',
      `Where the ${f(cpus().length * together.seconds, 2)} core-seconds of the concurrent run went (CPU seconds per process): ${Object.entries(
        cpu,
      )
        .map(([k, v]) => `${k} ${f(v, 3)}`)
        .join(
          ', ',
        )} (workerMain: the worker's main thread, publishing; workerOtherThreads: its engine thread and Node's helpers).`,
      '',
      `Redis commands of the concurrent run (INFO commandstats): ${redisCommands.publish} PUBLISH (one per stream entry written), ${redisCommands.scriptCalls} script calls (the worker's coalesced event writes, plus BullMQ's and the usage scripts), ${redisCommands.reads} stream reads (XREAD / XRANGE).`,
      sectionMarkers(MARKER).end,
    ].join('\n');
    process.stdout.write(`${md}\n`);
    // the committed results change together (data and section), and only when asked to
    if (values.write) {
      await mkdir(join(ROOT, 'docs/bench'), { recursive: true });
      await writeFile(join(ROOT, 'docs/bench/service-batching.json'), `${JSON.stringify(result, null, 2)}\n`);
      await replaceSection(join(ROOT, 'docs', 'BENCHMARKS.md'), MARKER, md);
    }
  } finally {
    await stack.stop();
  }
}

const MARKER = 'service-batching-bench';

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
