import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { anchorTable } from '../../workers/engine/src/bench/anchor';
import { type FormatRun, formatsMarkdown, ratios } from '../../workers/engine/src/bench/formats-report';
import {
  anchorLayout,
  CHILD_RESULT_MARKER,
  cmakeProgress,
  defaultPromptIds,
  ensureLlamaBench,
  ensureNodeLlamaCpp,
  llamaBenchArgs,
  meanStddev,
  type NodeLlamaCppChildReport,
  nodeLlamaCppConfig,
  parseLlamaBenchJson,
  parseVmHwmKb,
  pollPeakRss,
  readChildReport,
  readVmHwmKb,
  runLlamaBench,
  runNodeLlamaCpp,
  summarizeLlamaBench,
  toNodeLlamaCppResult,
} from '../../workers/engine/src/bench/llamacpp';
import type { Summary } from '../../workers/engine/src/bench/report';

/** One llama-bench row as `-o json` prints it (captured from the bundled v0.5.0 build, trimmed). */
function row(nPrompt: number, nGen: number, nDepth: number, samplesTs: number[], avg: number, sd: number) {
  return `  {
    "build_commit": "de3ff81",
    "build_number": 1,
    "cpu_info": "Intel(R) Xeon(R) Processor @ 2.60GHz",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": ".tmp/anchor-test/tiny-llama.gguf",
    "model_type": "llama ?B all F32",
    "model_size": 78193664,
    "model_n_params": 19548416,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 1,
    "cpu_strict": false,
    "type_k": "f16",
    "n_gpu_layers": 0,
    "flash_attn": -1,
    "n_prompt": ${nPrompt},
    "n_gen": ${nGen},
    "n_depth": ${nDepth},
    "test_time": "2026-12-02T07:03:07Z",
    "avg_ns": 24743520,
    "stddev_ns": 634115,
    "avg_ts": ${avg},
    "stddev_ts": ${sd},
    "samples_ns": [ 24295161, 25191880 ],
    "samples_ts": [ ${samplesTs.join(', ')} ]
  }`;
}
const sample = `[\n${[
  row(32, 0, 0, [1317.13, 1270.25], 1293.692645, 33.152096),
  row(0, 8, 0, [169.862, 154.072], 161.967262, 11.165474),
  row(0, 8, 64, [150.5, 149.5], 150, 0.5),
].join(',\n')}\n]\n`;

describe('llama-bench JSON', () => {
  it('parses every row, fields typed', () => {
    const tests = parseLlamaBenchJson(`some log line\n${sample}`);
    expect(tests).toHaveLength(3);
    expect(tests[0]).toMatchObject({
      nPrompt: 32,
      nGen: 0,
      nDepth: 0,
      nThreads: 1,
      nBatch: 2048,
      avgTokPerS: 1293.692645,
      stddevTokPerS: 33.152096,
      samplesTokPerS: [1317.13, 1270.25],
      samplesNs: [24295161, 25191880],
      buildCommit: 'de3ff81',
      modelType: 'llama ?B all F32',
      modelParams: 19548416,
    });
  });

  it('picks prefill at depth 0 and decode at the asked depth', () => {
    const tests = parseLlamaBenchJson(sample);
    const flat = summarizeLlamaBench(tests);
    expect(flat.prefillTokPerS).toBe(1293.692645);
    expect(flat.decodeTokPerS).toBe(161.967262);
    expect(flat.decodeDepth).toBe(0);
    const deep = summarizeLlamaBench(tests, 64);
    expect(deep.decodeTokPerS).toBe(150);
    expect(deep.decodeStddev).toBe(0.5);
    expect(deep.samples.decodeTokPerS).toEqual([150.5, 149.5]);
    expect(deep.build).toEqual({ commit: 'de3ff81', number: 1 });
    expect(summarizeLlamaBench(tests, 512).decodeTokPerS).toBeUndefined();
  });

  it('refuses output without a JSON array', () => {
    expect(() => parseLlamaBenchJson('error: failed to load model')).toThrow(/no JSON/);
  });

  it('matches llama-bench mean and sample stddev', () => {
    const s = meanStddev([1317.13, 1270.25]);
    expect(s.mean).toBeCloseTo(1293.69, 2);
    expect(s.stddev).toBeCloseTo(33.15, 2);
    expect(meanStddev([5]).stddev).toBe(0);
  });

  it('splits a depth run into a prefill run and a decode-at-depth run', () => {
    const o = { threads: 2, nPrompt: 64, nGen: 16, repetitions: 3 };
    const one = llamaBenchArgs('m.gguf', o);
    expect(one).toHaveLength(1);
    expect(one[0]).toEqual(expect.arrayContaining(['-ngl', '0', '-o', 'json']));
    expect(one[0].slice(-4)).toEqual(['-p', '64', '-n', '16']);
    const two = llamaBenchArgs('m.gguf', { ...o, depth: 512, warmup: false });
    expect(two).toHaveLength(2);
    expect(two[0].slice(-4).join(' ')).toBe('-p 64 -n 0');
    expect(two[1].slice(-6).join(' ')).toBe('-p 0 -n 16 -d 512');
    expect(two[0]).toContain('--no-warmup');
  });
});

describe('peak RSS', () => {
  const status = 'Name:\tllama-bench\nVmPeak:\t  300000 kB\nVmHWM:\t   96744 kB\nVmRSS:\t   90000 kB\n';

  it('reads VmHWM, not VmPeak or VmRSS', () => {
    expect(parseVmHwmKb(status)).toBe(96744);
    expect(parseVmHwmKb('Name:\tzombie\nState:\tZ (zombie)\n')).toBeUndefined();
  });

  it('reads a live process and polls one', () => {
    const own = readVmHwmKb('self');
    expect(own).toBeGreaterThan(1000);
    const peak = pollPeakRss(process.pid, 5).stop();
    expect(peak).toBeGreaterThanOrEqual(own!);
    expect(readVmHwmKb(2 ** 22 + 12345)).toBeUndefined();
  });
});

describe('cmake progress', () => {
  it('logs every 5 percent, or a slow step after the interval', () => {
    let t = 0;
    const seen: string[] = [];
    const step = cmakeProgress(
      (l) => seen.push(l),
      5,
      1000,
      () => t,
    );
    expect(step('[  0%] Building C object ggml.c.o')).toMatch(/0%/);
    expect(step('[  3%] Building ...')).toBeUndefined();
    expect(step('warning: unused variable')).toBeUndefined();
    expect(step('[  5%] Linking ...')).toMatch(/5%/);
    t = 2000;
    expect(step('[  6%] Building slow.cpp.o')).toMatch(/6%.*slow/);
    expect(step('[  6%] Building other.cpp.o')).toBeUndefined();
    expect(seen).toHaveLength(3);
  });
});

describe('node-llama-cpp run', () => {
  const report: NodeLlamaCppChildReport = {
    ok: true,
    prefillSeconds: [0.01, 0.02],
    decodeSeconds: [0.1],
    promptTokens: 64,
    decodeDepth: 64,
    genTokens: 16,
    sequences: 2,
    contextIds: [1, 3, 4],
    generatedIds: [7, 8],
    sequencesAgree: true,
    contextSize: 256,
    threads: 1,
    rss: { beforeLoadKb: 70000, afterLoadKb: 240000, peakKb: 250000 },
    build: {
      release: 'v0.5.0',
      repo: 'ggml-org/llama.cpp',
      buildType: 'prebuilt',
      gpu: false,
      systemInfo: '',
    },
    model: { architecture: 'llama', description: 'llama ?B all F32', size: 1, vocabSize: 32000 },
  };
  const proc = (stdout: string, code = 0) => ({
    code,
    signal: null,
    stdout,
    tail: ['boom'],
    timedOut: false,
  });

  it('turns the child report into tokens/s, decode counting every sequence', () => {
    const r = toNodeLlamaCppResult(report);
    expect(r.prefillTokPerS).toBeCloseTo((6400 + 3200) / 2, 6);
    expect(r.decodeTokPerS).toBeCloseTo(320, 6);
    expect(r.peakRssKb).toBe(250000);
  });

  it('finds the marked result line among other output', () => {
    const got = readChildReport(proc(`noise\n${CHILD_RESULT_MARKER}${JSON.stringify(report)}\n`));
    expect(got).toEqual(report);
    const failed = readChildReport(proc(`${CHILD_RESULT_MARKER}{"ok":false,"reason":"bad magic"}\n`, 1));
    expect(failed).toEqual({ ok: false, reason: 'bad magic' });
    const none = readChildReport(proc('Segmentation fault\n', 139));
    expect(none.ok).toBe(false);
    expect(!none.ok && none.reason).toMatch(/exited with code 139[\s\S]*boom/);
  });

  it('starts prompts with BOS and skips the special ids', () => {
    expect(defaultPromptIds(5)).toEqual([1, 3, 4, 5, 6]);
    expect(defaultPromptIds(6, 6)).toEqual([1, 3, 4, 5, 3, 4]);
  });

  it('checks sizes before anything is loaded', () => {
    const base = { threads: 1, contextSize: 128, promptTokens: 64, genTokens: 16 };
    expect(nodeLlamaCppConfig('x.gguf', { ...base, decodeDepth: 120 })).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/cannot hold 120 \+ 16/),
    });
    expect(nodeLlamaCppConfig('x.gguf', { ...base, promptIds: [1, 2] })).toMatchObject({
      reason: expect.stringMatching(/promptIds has 2 ids; need 64/),
    });
  });
});

describe('cannot load', () => {
  const dir = mkdtempSync(join(tmpdir(), 'llamacpp-anchor-'));
  const file = join(dir, 'a-file');
  writeFileSync(file, 'not a folder');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('ensureNodeLlamaCpp says why when the cache folder cannot be made (no npm run)', async () => {
    const r = await ensureNodeLlamaCpp({ cacheDir: join(file, 'cache') });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(/cannot prepare .*a-file|only linux-x64/);
    const b = await ensureLlamaBench({ cacheDir: join(file, 'cache') });
    expect(b.ok).toBe(false);
  });

  it('runNodeLlamaCpp and runLlamaBench refuse what is not there', async () => {
    const n = await runNodeLlamaCpp('x.gguf', {
      threads: 1,
      contextSize: 64,
      promptTokens: 8,
      genTokens: 4,
      cacheDir: dir,
    });
    expect(n).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/not installed in .*run ensureNodeLlamaCpp/),
    });
    const b = await runLlamaBench(anchorLayout(dir).binary, 'x.gguf', {
      threads: 1,
      nPrompt: 8,
      nGen: 4,
      repetitions: 1,
    });
    expect(b).toMatchObject({ ok: false, reason: expect.stringMatching(/no llama-bench at/) });
  });
});

describe('reports against llama.cpp', () => {
  const run = (engine: FormatRun['engine'], round: number, decode: number, threads = 1): FormatRun => ({
    engine,
    format: 'q4_0',
    threads,
    round,
    prefillTokPerS: 100 * (round + 1),
    decodeTokPerS: { 64: decode },
    peakRssKb: 1024 * (engine === 'ppsd' ? 300 : 200),
  });

  it('takes ratios round by round (each ppsd run against the anchor run of its round)', () => {
    const runs = [
      run('ppsd', 0, 90),
      run('llama-bench', 0, 100),
      run('ppsd', 1, 120),
      run('llama-bench', 1, 100),
    ];
    expect(ratios(runs, 'llama-bench', 'q4_0', 1, (r) => r.decodeTokPerS[64])).toEqual([0.9, 1.2]);
    expect(ratios(runs, 'node-llama-cpp', 'q4_0', 1, (r) => r.decodeTokPerS[64])).toEqual([]);
    const md = formatsMarkdown({
      meta: {
        command: 'x',
        model: 'm',
        cpu: 'cpu',
        cores: 2,
        node: 'v20',
        date: '2026-12-02T00:00:00Z',
        seconds: 1,
        loadBefore: [0, 0, 0],
        loadAfter: [0, 0, 0],
        llamaCpp: 'v0',
        nodeLlamaCpp: '3',
        contexts: [64],
        gen: 8,
        prompt: 16,
        rounds: 2,
      },
      runs,
    });
    // median ratio 1.05 meets the target (bold); RSS ratio 1.5 does not
    expect(md).toContain(
      '| Q4_0 | 1 | 105.0 (90.0-120.0) | 100.0 (100.0-100.0) | - | **1.05 (0.90-1.20)** | - |',
    );
    expect(md).toMatch(/\| Q4_0 \| 1 \| 300 \(300-300\) \| 200 \(200-200\) \| - \| 1\.50 \(1\.50-1\.50\) \|/);
  });

  it('compares each decoder with llama.cpp at its own thread budget', () => {
    const s = (label: string, tokensPerSecond: number) =>
      ({ label, alpha: null, tokensPerSecond }) as Summary;
    const table = anchorTable(
      [s('ar-1core', 50), s('ppsd', 150), s('eesd', 40)],
      {
        gguf: 'f.gguf',
        decodeTokPerS: { 1: [100], 2: [200, 100] },
        depth: 10,
        tokens: 8,
      },
      2,
    );
    expect(table).toContain('| ar-1core | - | 1 | 50.0 | 100.0 | 0.50 |');
    expect(table).toContain('| ppsd | - | 2 | 150.0 | 150.0 | 1.00 |');
    expect(table).toContain('| eesd | - | 1 | 40.0 | 100.0 | 0.40 |');
  });
});
