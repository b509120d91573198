/**
 * Service benchmark: what API + queue + Redis stream add on top of the engine.
 *
 *   node --import tsx scripts/bench-service.ts [--runs 40] [--tokens 64] [--concurrency 64] [--seconds 10] [--no-write]
 *
 * Boots the real local stack on loopback (redis-server, s3rver with the stories260K package, the API,
 * one worker) through test/helpers/stack.ts, then measures, interleaving direct and service runs:
 *   - TTFT and inter-token latency of the engine called in-process (Engine.generate callbacks);
 *   - the same through POST /v1/completions with stream=true (first SSE chunk carrying text, gaps between
 *     text chunks), same prompt, greedy, same max_tokens;
 *   - requests/s the API sustains: a closed loop of N concurrent streaming clients for a fixed time.
 * Writes the results into docs/BENCHMARKS.md between the service-bench markers (other sections untouched)
 * and the raw numbers to bench-out/service.json.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '@ppsd/engine';
import { MODEL, ROOT, readSse, startStack, waitFor } from '../test/helpers/stack';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '40' },
    tokens: { type: 'string', default: '64' },
    concurrency: { type: 'string', default: '64' },
    seconds: { type: 'string', default: '10' },
    'no-write': { type: 'boolean', default: false },
  },
});
const RUNS = Number(values.runs);
const TOKENS = Number(values.tokens);
const CONC = Number(values.concurrency);
const SECONDS = Number(values.seconds);
const PROMPT = 'Once upon a time';

const pct = (xs: number[], p: number): number => {
  if (!xs.length) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const f = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');

interface Sample {
  ttft: number;
  /** Gaps between successive deliveries of text (engine callbacks / SSE chunks). */
  itl: number[];
  /** Time from the first to the last token text. */
  span: number;
  tokens: number;
}

/** Mean inter-token latency of one request (TPOT): first-to-last token time over the tokens after the first. */
const tpot = (x: Sample): number => (x.tokens > 1 ? x.span / (x.tokens - 1) : Number.NaN);

async function direct(engine: Engine): Promise<Sample> {
  const t0 = performance.now();
  let last = 0;
  let ttft = 0;
  const itl: number[] = [];
  let first = 0;
  const r = await engine.generate(
    PROMPT,
    { maxTokens: TOKENS, temperature: 0, topP: 1, seed: 0, stop: [] },
    (ev) => {
      const now = performance.now();
      if (!ev.text) return;
      if (!ttft) {
        ttft = now - t0;
        first = now;
      } else itl.push(now - last);
      last = now;
    },
  );
  return { ttft, itl, span: last - first, tokens: r.completionTokens };
}

async function viaService(url: string, key: string): Promise<Sample> {
  const t0 = performance.now();
  let last = 0;
  let ttft = 0;
  const itl: number[] = [];
  let tokens = 0;
  let first = 0;
  await readSse(`${url}/v1/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({
      model: MODEL,
      prompt: PROMPT,
      max_tokens: TOKENS,
      temperature: 0,
      seed: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
    onMessage: (m) => {
      if (m.data === '[DONE]') return;
      const chunk = JSON.parse(m.data);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (!chunk.choices?.[0]?.text) return;
      const now = performance.now();
      if (!ttft) {
        ttft = now - t0;
        first = now;
      } else itl.push(now - last);
      last = now;
    },
  });
  return { ttft, itl, span: last - first, tokens };
}

async function throughput(
  url: string,
  key: string,
): Promise<{ rps: number; ok: number; failed: number; p50: number; p99: number }> {
  const end = performance.now() + SECONDS * 1000;
  let ok = 0;
  let failed = 0;
  const lat: number[] = [];
  await Promise.all(
    Array.from({ length: CONC }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        const r = await readSse(`${url}/v1/completions`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 4, temperature: 0, stream: true }),
        }).catch(() => null);
        if (r?.status === 200 && r.messages[r.messages.length - 1]?.data === '[DONE]') {
          ok++;
          lat.push(performance.now() - t0);
        } else failed++;
      }
    }),
  );
  return { rps: ok / SECONDS, ok, failed, p50: pct(lat, 50), p99: pct(lat, 99) };
}

async function main(): Promise<void> {
  const loadAtStart = loadavg();
  console.error('[bench] starting the stack (redis, s3rver, API, 1 worker) ...');
  const stack = await startStack({
    workers: 1,
    apiEnv: { PPSD_TENANT_MAX_JOBS: String(CONC * 2) },
    redisConfig: { appendfsync: 'everysec' }, // as `npm start` runs it (the tests' Redis fsyncs every write)
  });
  const engine = await Engine.open(stack.packageDir, { decoder: 'ar' });
  try {
    await waitFor('API ready', async () => (await fetch(`${stack.apiUrl}/readyz`)).ok, 30_000);
    for (let i = 0; i < 5; i++) {
      await direct(engine);
      await viaService(stack.apiUrl, stack.apiKey);
    }
    const d: Sample[] = [];
    const s: Sample[] = [];
    for (let i = 0; i < RUNS; i++) {
      d.push(await direct(engine));
      s.push(await viaService(stack.apiUrl, stack.apiKey));
    }
    console.error(`[bench] latency done; closed loop of ${CONC} clients for ${SECONDS} s ...`);
    const tp = await throughput(stack.apiUrl, stack.apiKey);
    const row = (name: string, xs: Sample[]) => {
      const ttft = xs.map((x) => x.ttft);
      const gaps = xs.flatMap((x) => x.itl);
      const itl = xs.map(tpot);
      return {
        name,
        ttftP50: pct(ttft, 50),
        ttftP99: pct(ttft, 99),
        itlP50: pct(itl, 50),
        itlP99: pct(itl, 99),
        gapP50: pct(gaps, 50),
        gapP99: pct(gaps, 99),
        deliveries: xs.reduce((n, x) => n + x.itl.length + 1, 0) / Math.max(1, xs.length),
        tokens: xs[0]?.tokens ?? 0,
      };
    };
    const rd = row('engine direct (in-process)', d);
    const rs = row('API + queue + stream (SSE)', s);
    const result = {
      when: new Date().toISOString(),
      cpus: cpus().length,
      cpu: cpus()[0]?.model,
      node: process.version,
      runs: RUNS,
      tokens: TOKENS,
      direct: rd,
      service: rs,
      throughput: { concurrency: CONC, seconds: SECONDS, ...tp },
    };
    console.log(JSON.stringify(result, null, 2));
    await mkdir(join(ROOT, 'bench-out'), { recursive: true });
    await writeFile(join(ROOT, 'bench-out', 'service.json'), JSON.stringify(result, null, 2));

    const md = [
      '<!-- service-bench:start -->',
      '## Service overhead (API + queue + stream vs engine)',
      '',
      `\`node --import tsx scripts/bench-service.ts\` on ${result.cpus} x ${result.cpu ?? 'CPU'}, Node ${result.node}, ${result.when.slice(0, 10)}.`,
      `Model stories260K (AR, greedy), prompt "${PROMPT}", max_tokens ${TOKENS} (${rd.tokens} tokens generated), ${RUNS} runs of each path interleaved after 5 warm-ups.`,
      'Everything on loopback on the same machine: redis-server (AOF, appendfsync everysec as in `npm start`), the API, one worker (on CPU) and the benchmark client share the cores.',
      'TTFT: request start to the first token text. ITL: per request, (last token time - first token time) / (tokens - 1), p50/p99 over requests.',
      'Gap: time between successive deliveries of text (engine callbacks; SSE chunks for the service, which may carry several tokens when the worker merges batches that piled up behind a Redis write).',
      '',
      '| path | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | gap p50 (ms) | gap p99 (ms) | deliveries / request |',
      '|---|---|---|---|---|---|---|---|',
      `| ${rd.name} | ${f(rd.ttftP50)} | ${f(rd.ttftP99)} | ${f(rd.itlP50)} | ${f(rd.itlP99)} | ${f(rd.gapP50)} | ${f(rd.gapP99)} | ${rd.deliveries.toFixed(1)} |`,
      `| ${rs.name} | ${f(rs.ttftP50)} | ${f(rs.ttftP99)} | ${f(rs.itlP50)} | ${f(rs.itlP99)} | ${f(rs.gapP50)} | ${f(rs.gapP99)} | ${rs.deliveries.toFixed(1)} |`,
      `| **added by the service** | **${f(rs.ttftP50 - rd.ttftP50)}** | **${f(rs.ttftP99 - rd.ttftP99)}** | **${f(rs.itlP50 - rd.itlP50)}** | **${f(rs.itlP99 - rd.itlP99)}** | | | |`,
      '',
      `Load average when the run began: ${loadAtStart.map((x) => x.toFixed(1)).join(' / ')} (1/5/15 min). p99 differences on a busy 2-core box are noisy (GC pauses and other processes land in either path).`,
      '',
      `Throughput: a closed loop of ${CONC} concurrent streaming clients for ${SECONDS} s (max_tokens 4, one worker): ` +
        `**${tp.rps.toFixed(1)} requests/s** (${tp.ok} completed, ${tp.failed} failed; end-to-end latency p50 ${f(tp.p50)} ms, p99 ${f(tp.p99)} ms).`,
      'With one worker the engine serializes generations, so this is the request rate the whole path sustains end to end, not the API alone.',
      '<!-- service-bench:end -->',
    ].join('\n');
    if (!values['no-write']) await writeSection(join(ROOT, 'docs', 'BENCHMARKS.md'), md);
  } finally {
    await engine.close();
    await stack.stop();
  }
}

async function writeSection(file: string, section: string): Promise<void> {
  let doc = await readFile(file, 'utf8').catch(() => '# Benchmarks\n');
  const start = doc.indexOf('<!-- service-bench:start -->');
  const end = doc.indexOf('<!-- service-bench:end -->');
  if (start >= 0 && end > start)
    doc = doc.slice(0, start) + section + doc.slice(end + '<!-- service-bench:end -->'.length);
  else doc = `${doc.replace(/\s*$/, '')}\n\n${section}\n`;
  await writeFile(file, doc);
  console.error(`[bench] wrote the service section of ${file}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
