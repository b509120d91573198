/**
 * llama.cpp as a measuring stick: the same GGUF file run by llama.cpp's own `llama-bench` and by
 * node-llama-cpp (llama.cpp behind a Node addon, so it pays a JS-boundary cost like ours does), next to
 * ppsd. Nothing here is ever used as our engine; it only answers "how fast is llama.cpp on this file,
 * on this machine, with this many threads".
 *
 * Everything lives in one scratch cache folder (default `<repo>/.tmp/llamacpp`, gitignored):
 *
 *   <cacheDir>/package.json, node_modules/     npm install of node-llama-cpp + its CPU prebuilt
 *   <cacheDir>/src/llama.cpp/                  git clone of the llama.cpp source node-llama-cpp bundles
 *   <cacheDir>/src/llama.cpp/build/bin/llama-bench
 *   <cacheDir>/src/llama-bench.json            which llama.cpp tag that binary was built from
 *
 * The only network access is the npm install. node-llama-cpp's own postinstall (which may download or
 * compile llama.cpp) never runs: we install with --ignore-scripts and load with `build: 'never'`.
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** Pinned so that the prebuilt addon and the bundled llama.cpp source are the same llama.cpp. */
export const NODE_LLAMA_CPP_VERSION = '3.22.1';
/** The CPU-only prebuilt addon for this platform (the only one we load). */
export const PREBUILT_PACKAGE = '@node-llama-cpp/linux-x64';

export type Log = (line: string) => void;
export interface Failure {
  ok: false;
  reason: string;
}
export interface CacheOptions {
  /** Scratch folder for the install and the build; default `<repo>/.tmp/llamacpp`. */
  cacheDir?: string;
  log?: Log;
}

// ---------------------------------------------------------------------------------------------------
// Layout

/** `<repo>/.tmp/llamacpp`, where an earlier install and build are found and reused. */
export function defaultCacheDir(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../../../.tmp/llamacpp');
}

export interface AnchorLayout {
  cacheDir: string;
  /** node-llama-cpp's package root (`node_modules/node-llama-cpp`). */
  packageDir: string;
  prebuiltDir: string;
  /** The llama.cpp source node-llama-cpp ships, as a git bundle, and its tag. */
  bundle: string;
  infoJson: string;
  srcDir: string;
  buildDir: string;
  binary: string;
  stamp: string;
}

export function anchorLayout(cacheDir = defaultCacheDir()): AnchorLayout {
  const packageDir = join(cacheDir, 'node_modules', 'node-llama-cpp');
  const srcDir = join(cacheDir, 'src', 'llama.cpp');
  const buildDir = join(srcDir, 'build');
  return {
    cacheDir,
    packageDir,
    prebuiltDir: join(cacheDir, 'node_modules', ...PREBUILT_PACKAGE.split('/')),
    bundle: join(packageDir, 'llama', 'gitRelease.bundle'),
    infoJson: join(packageDir, 'llama', 'llama.cpp.info.json'),
    srcDir,
    buildDir,
    binary: join(buildDir, 'bin', 'llama-bench'),
    stamp: join(cacheDir, 'src', 'llama-bench.json'),
  };
}

// ---------------------------------------------------------------------------------------------------
// Child processes

interface ProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Whole stdout, only when asked for (llama-bench's JSON); otherwise empty. */
  stdout: string;
  /** Last lines of stdout and stderr together, for error reasons. */
  tail: string[];
  /** Set when the process could not be started at all (ENOENT and the like). */
  spawnError?: string;
  timedOut: boolean;
}

interface ProcessOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  captureStdout?: boolean;
  onLine?: (line: string) => void;
  timeoutMs?: number;
  /** Called once with the pid right after the spawn (peak-RSS polling). */
  onSpawn?: (pid: number) => void;
  tailLines?: number;
}

/** Runs a command to completion without a shell; never rejects. */
export function runProcess(cmd: string, args: string[], o: ProcessOptions = {}): Promise<ProcessResult> {
  const tailLines = o.tailLines ?? 30;
  return new Promise((done) => {
    const tail: string[] = [];
    let stdout = '';
    let timedOut = false;
    let spawnError: string | undefined;
    const child = spawn(cmd, args, {
      cwd: o.cwd,
      env: o.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (child.pid !== undefined) o.onSpawn?.(child.pid);
    const timer =
      o.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, o.timeoutMs);
    const lines = (onChunk?: (s: string) => void) => {
      let rest = '';
      return (chunk: Buffer) => {
        const s = chunk.toString('utf8');
        onChunk?.(s);
        const parts = (rest + s).split(/\r?\n|\r/);
        rest = parts.pop() ?? '';
        for (const line of parts) {
          if (line.length === 0) continue;
          tail.push(line);
          if (tail.length > tailLines) tail.shift();
          o.onLine?.(line);
        }
      };
    };
    child.stdout.on(
      'data',
      lines(
        o.captureStdout
          ? (s) => {
              stdout += s;
            }
          : undefined,
      ),
    );
    child.stderr.on('data', lines());
    child.on('error', (e) => {
      spawnError = e.message;
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      done({ code, signal, stdout, tail, spawnError, timedOut });
    });
  });
}

/** A one-sentence reason for a failed command, ending in its output's last lines. */
export function failureReason(what: string, r: ProcessResult, hint = ''): string {
  if (r.spawnError) return `${what}: could not start (${r.spawnError}).${hint ? ` ${hint}` : ''}`;
  const how = r.timedOut
    ? 'timed out'
    : r.signal
      ? `was killed by ${r.signal}`
      : `exited with code ${r.code}`;
  const tail = r.tail.slice(-12).join('\n');
  return `${what} ${how}.${hint ? ` ${hint}` : ''}${tail ? `\n${tail}` : ''}`;
}

// ---------------------------------------------------------------------------------------------------
// Peak RSS

/**
 * The `VmHWM:` line of a `/proc/<pid>/status` text in KiB (the resident-set high-water mark: the most
 * resident memory the process ever had, mmapped model pages it touched included). Undefined when the
 * line is missing, as it is for a zombie whose memory is already gone.
 */
export function parseVmHwmKb(statusText: string): number | undefined {
  const m = /^VmHWM:\s*(\d+)\s*kB/m.exec(statusText);
  return m ? Number(m[1]) : undefined;
}

/** VmHWM of a live process in KiB, or undefined once it has exited. */
export function readVmHwmKb(pid: number | 'self'): number | undefined {
  try {
    return parseVmHwmKb(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Polls a child's VmHWM and keeps the largest value seen. VmHWM never decreases while the process
 * lives, so the last successful read is the peak up to that moment; the max only guards against a last
 * read that fails because the process is exiting. Growth in the final interval before exit is missed,
 * which is why the interval is short next to a model load.
 */
export function pollPeakRss(pid: number, intervalMs = 50): { stop(): number | undefined } {
  let peak: number | undefined;
  const read = () => {
    const kb = readVmHwmKb(pid);
    if (kb !== undefined && (peak === undefined || kb > peak)) peak = kb;
  };
  read();
  const timer = setInterval(read, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      return peak;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// node-llama-cpp install

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function installedVersion(packageDir: string): string | undefined {
  return readJson<{ version?: string }>(join(packageDir, 'package.json'))?.version;
}

/** Whether both node-llama-cpp and its CPU prebuilt are installed at the pinned version. */
export function nodeLlamaCppInstalled(cacheDir = defaultCacheDir()): boolean {
  const l = anchorLayout(cacheDir);
  return (
    installedVersion(l.packageDir) === NODE_LLAMA_CPP_VERSION &&
    installedVersion(l.prebuiltDir) === NODE_LLAMA_CPP_VERSION
  );
}

/**
 * Installs node-llama-cpp and its CPU prebuilt into `<cacheDir>/node_modules` (a scratch project with
 * its own package.json, so our workspace lockfile is untouched). Skips when both are already there at
 * the pinned version.
 */
export async function ensureNodeLlamaCpp(
  o: CacheOptions = {},
): Promise<{ ok: true; dir: string; version: string } | Failure> {
  const log = o.log ?? (() => {});
  const l = anchorLayout(o.cacheDir);
  if (nodeLlamaCppInstalled(l.cacheDir))
    return { ok: true, dir: l.packageDir, version: NODE_LLAMA_CPP_VERSION };
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return {
      ok: false,
      reason: `only linux-x64 is supported (this is ${process.platform}-${process.arch}).`,
    };
  }
  try {
    mkdirSync(l.cacheDir, { recursive: true });
    const pkg = join(l.cacheDir, 'package.json');
    if (!existsSync(pkg))
      writeFileSync(pkg, `${JSON.stringify({ name: 'llamacpp-anchor', private: true })}\n`);
  } catch (e) {
    return { ok: false, reason: `cannot prepare ${l.cacheDir}: ${(e as Error).message}` };
  }
  log(`installing node-llama-cpp@${NODE_LLAMA_CPP_VERSION} into ${l.cacheDir}`);
  const args = [
    'install',
    // no postinstall: node-llama-cpp's would try to download or build llama.cpp
    '--ignore-scripts',
    '--no-audit',
    '--no-fund',
    '--save-exact',
    // skip the CUDA/Vulkan/other-platform prebuilts (hundreds of MB); the CPU one is named explicitly
    '--omit=optional',
    `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`,
    `${PREBUILT_PACKAGE}@${NODE_LLAMA_CPP_VERSION}`,
  ];
  const env = { ...process.env, ONNXRUNTIME_NODE_INSTALL: process.env.ONNXRUNTIME_NODE_INSTALL ?? 'skip' };
  const r = await runProcess('npm', args, { cwd: l.cacheDir, env, timeoutMs: 10 * 60_000 });
  if (r.code !== 0) return { ok: false, reason: failureReason('npm install of node-llama-cpp', r) };
  if (!nodeLlamaCppInstalled(l.cacheDir)) {
    return {
      ok: false,
      reason: `npm install finished but node-llama-cpp@${NODE_LLAMA_CPP_VERSION} is not in ${l.packageDir}.`,
    };
  }
  return { ok: true, dir: l.packageDir, version: NODE_LLAMA_CPP_VERSION };
}

// ---------------------------------------------------------------------------------------------------
// llama-bench build

/** The llama.cpp release tag node-llama-cpp bundles (`llama/llama.cpp.info.json`). */
export function bundledTag(cacheDir = defaultCacheDir()): string | undefined {
  return readJson<{ tag?: string }>(anchorLayout(cacheDir).infoJson)?.tag;
}

/**
 * Turns cmake's `[ NN%] ...` lines into a few log lines: one each time the percentage moves on by
 * `stepPct`, or after `intervalMs` of a slow stretch (a 15-minute build otherwise looks hung).
 * Returns the line it logged, if any (so it can be tested without a build).
 */
export function cmakeProgress(log: Log, stepPct = 5, intervalMs = 20_000, now = () => Date.now()) {
  let lastPct = -stepPct;
  let lastAt = now();
  return (line: string): string | undefined => {
    const m = /^\[\s*(\d+)%\]\s*(.*)$/.exec(line);
    if (!m) return undefined;
    const pct = Number(m[1]);
    const t = now();
    if (pct < lastPct + stepPct && !(t - lastAt >= intervalMs && pct > lastPct)) return undefined;
    lastPct = pct;
    lastAt = t;
    const out = `llama-bench build ${String(pct).padStart(3)}%  ${m[2].slice(0, 90)}`;
    log(out);
    return out;
  };
}

const CMAKE_CONFIGURE = [
  '-DCMAKE_BUILD_TYPE=Release',
  // tuned for this CPU, like a user building llama.cpp for their own machine would
  '-DGGML_NATIVE=ON',
  '-DLLAMA_CURL=OFF',
  '-DLLAMA_BUILD_TESTS=OFF',
  '-DLLAMA_BUILD_EXAMPLES=OFF',
  '-DLLAMA_BUILD_SERVER=OFF',
];

interface Stamp {
  tag: string;
  binary: string;
  builtAt: string;
}

/** Whether `dir` is missing or an empty folder (safe to clone into). */
function emptyOrMissing(dir: string): boolean {
  if (!existsSync(dir)) return true;
  try {
    return readdirSync(dir).length === 0;
  } catch {
    return false;
  }
}

/**
 * Builds `llama-bench` once from the llama.cpp source node-llama-cpp bundles (so the binary and the
 * addon are the same llama.cpp), ~15 minutes on 2 cores. Reuses a binary already at
 * `<cacheDir>/src/llama.cpp/build/bin/llama-bench`; an interrupted build resumes (cmake is incremental).
 * Never deletes anything: a binary from another tag is reported, not replaced.
 */
export async function ensureLlamaBench(
  o: CacheOptions & { jobs?: number } = {},
): Promise<{ ok: true; binary: string; tag: string } | Failure> {
  const log = o.log ?? (() => {});
  const l = anchorLayout(o.cacheDir);
  const installed = await ensureNodeLlamaCpp(o);
  if (!installed.ok) return installed;
  const tag = bundledTag(l.cacheDir);
  if (!tag || !existsSync(l.bundle)) {
    return {
      ok: false,
      reason: `node-llama-cpp in ${l.packageDir} has no bundled llama.cpp source (gitRelease.bundle).`,
    };
  }
  if (existsSync(l.binary)) return reuseBinary(l, tag);

  if (!existsSync(join(l.srcDir, '.git'))) {
    if (!emptyOrMissing(l.srcDir)) {
      return {
        ok: false,
        reason: `${l.srcDir} exists but is not a git clone; move it away to build llama-bench.`,
      };
    }
    log(`cloning llama.cpp ${tag} from the node-llama-cpp bundle into ${l.srcDir}`);
    mkdirSync(dirname(l.srcDir), { recursive: true });
    const clone = await runProcess('git', ['clone', '--quiet', l.bundle, l.srcDir]);
    if (clone.code !== 0)
      return {
        ok: false,
        reason: failureReason('git clone of the llama.cpp bundle', clone, 'Is git installed?'),
      };
  }
  const hint = 'llama-bench needs cmake and a C++ compiler (apt-get install cmake build-essential).';
  if (!existsSync(join(l.buildDir, 'CMakeCache.txt'))) {
    log('configuring llama.cpp (cmake)');
    const conf = await runProcess('cmake', ['-B', 'build', ...CMAKE_CONFIGURE], { cwd: l.srcDir });
    if (conf.code !== 0) return { ok: false, reason: failureReason('cmake configure', conf, hint) };
  }
  const jobs = o.jobs ?? availableParallelism();
  log(`building llama-bench with ${jobs} jobs (about 15 minutes on 2 cores)`);
  const build = await runProcess('cmake', ['--build', 'build', '--target', 'llama-bench', `-j${jobs}`], {
    cwd: l.srcDir,
    onLine: cmakeProgress(log),
    tailLines: 40,
  });
  if (build.code !== 0 || !existsSync(l.binary)) {
    return { ok: false, reason: failureReason('cmake --build llama-bench', build, hint) };
  }
  writeStamp(l, tag);
  log(`llama-bench ${tag} built: ${l.binary}`);
  return { ok: true, binary: l.binary, tag };
}

function writeStamp(l: AnchorLayout, tag: string): void {
  const stamp: Stamp = { tag, binary: l.binary, builtAt: new Date().toISOString() };
  writeFileSync(l.stamp, `${JSON.stringify(stamp, null, 2)}\n`);
}

/** An existing binary: stamped with its tag (a build from before stamps existed gets the bundle's). */
function reuseBinary(l: AnchorLayout, tag: string): { ok: true; binary: string; tag: string } | Failure {
  const stamp = readJson<Stamp>(l.stamp);
  if (!stamp) {
    writeStamp(l, tag);
    return { ok: true, binary: l.binary, tag };
  }
  if (stamp.tag !== tag) {
    return {
      ok: false,
      reason: `${l.binary} was built from llama.cpp ${stamp.tag} but node-llama-cpp bundles ${tag}; move ${l.srcDir} away to rebuild.`,
    };
  }
  return { ok: true, binary: l.binary, tag };
}

// ---------------------------------------------------------------------------------------------------
// llama-bench run

/** One row of `llama-bench -o json`: a pp test (nGen 0) or a tg test (nPrompt 0), at some depth. */
export interface LlamaBenchTest {
  nPrompt: number;
  nGen: number;
  nDepth: number;
  nThreads: number;
  nBatch: number;
  nUbatch: number;
  /** Mean and sample stddev over repetitions of (nPrompt + nGen) / seconds, as llama-bench prints. */
  avgTokPerS: number;
  stddevTokPerS: number;
  samplesTokPerS: number[];
  samplesNs: number[];
  buildCommit: string;
  buildNumber: number;
  modelType: string;
  modelSize: number;
  modelParams: number;
  backends: string;
  cpuInfo: string;
}

type Json = Record<string, unknown>;
const num = (v: unknown): number => (typeof v === 'number' ? v : Number(v));
const str = (v: unknown): string => (v === undefined || v === null ? '' : String(v));
const nums = (v: unknown): number[] => (Array.isArray(v) ? v.map(num) : []);

/** Parses llama-bench's `-o json` stdout (an array of test objects; anything around it is ignored). */
export function parseLlamaBenchJson(text: string): LlamaBenchTest[] {
  const start = text.indexOf('[');
  const end = text.lastIndexOf(']');
  if (start < 0 || end < start) throw new Error('llama-bench printed no JSON array');
  const rows = JSON.parse(text.slice(start, end + 1)) as Json[];
  return rows.map((r) => ({
    nPrompt: num(r.n_prompt),
    nGen: num(r.n_gen),
    nDepth: num(r.n_depth ?? 0),
    nThreads: num(r.n_threads),
    nBatch: num(r.n_batch),
    nUbatch: num(r.n_ubatch),
    avgTokPerS: num(r.avg_ts),
    stddevTokPerS: num(r.stddev_ts),
    samplesTokPerS: nums(r.samples_ts),
    samplesNs: nums(r.samples_ns),
    buildCommit: str(r.build_commit),
    buildNumber: num(r.build_number),
    modelType: str(r.model_type),
    modelSize: num(r.model_size),
    modelParams: num(r.model_n_params),
    backends: str(r.backends),
    cpuInfo: str(r.cpu_info),
  }));
}

export interface LlamaBenchSummary {
  prefillTokPerS?: number;
  prefillStddev?: number;
  decodeTokPerS?: number;
  decodeStddev?: number;
  /** Context length the decode test ran after (llama-bench's n_depth). */
  decodeDepth?: number;
  samples: { prefillTokPerS: number[]; decodeTokPerS: number[] };
  build?: { commit: string; number: number };
}

/** Picks the prefill (pp, depth 0) and decode (tg, at `depth`) rows out of the tests. */
export function summarizeLlamaBench(tests: LlamaBenchTest[], depth = 0): LlamaBenchSummary {
  const pp = tests.find((t) => t.nPrompt > 0 && t.nGen === 0 && t.nDepth === 0);
  const tg = tests.find((t) => t.nGen > 0 && t.nPrompt === 0 && t.nDepth === depth);
  return {
    prefillTokPerS: pp?.avgTokPerS,
    prefillStddev: pp?.stddevTokPerS,
    decodeTokPerS: tg?.avgTokPerS,
    decodeStddev: tg?.stddevTokPerS,
    decodeDepth: tg?.nDepth,
    samples: { prefillTokPerS: pp?.samplesTokPerS ?? [], decodeTokPerS: tg?.samplesTokPerS ?? [] },
    build: tests[0] && { commit: tests[0].buildCommit, number: tests[0].buildNumber },
  };
}

export interface LlamaBenchOptions {
  threads: number;
  /** Prompt length of the prefill test (0: none). */
  nPrompt: number;
  /** Tokens of the decode test (0: none). */
  nGen: number;
  /** Decode after a context of this many tokens (llama-bench `-d`); prefill always starts empty. */
  depth?: number;
  repetitions: number;
  /** llama-bench's warmup run before the measured ones; on by default, as llama-bench does. */
  warmup?: boolean;
  extraArgs?: string[];
  timeoutMs?: number;
  log?: Log;
}

export interface LlamaBenchResult extends LlamaBenchSummary {
  ok: true;
  tests: LlamaBenchTest[];
  /** Largest VmHWM of the llama-bench process(es), KiB; see pollPeakRss. */
  peakRssKb?: number;
  commands: string[][];
}

const depthSupport = new Map<string, boolean>();

/** Whether this llama-bench takes `-d/--n-depth` (newer ones do; asked once per binary). */
export async function llamaBenchSupportsDepth(binary: string): Promise<boolean> {
  const known = depthSupport.get(binary);
  if (known !== undefined) return known;
  const r = await runProcess(binary, ['--help'], { captureStdout: true, tailLines: 400, timeoutMs: 30_000 });
  const yes = /--n-depth\b/.test(r.stdout + r.tail.join('\n'));
  depthSupport.set(binary, yes);
  return yes;
}

/**
 * The llama-bench command lines for one measurement. llama-bench runs every -p and -n at every -d, so
 * a decode depth means two runs: prefill at depth 0, decode at `depth` (rather than paying a prefill
 * at depth too).
 */
export function llamaBenchArgs(gguf: string, o: LlamaBenchOptions): string[][] {
  const common = [
    '-m',
    gguf,
    '-t',
    String(o.threads),
    '-r',
    String(o.repetitions),
    '-ngl',
    '0',
    '-o',
    'json',
  ];
  if (o.warmup === false) common.push('--no-warmup');
  common.push(...(o.extraArgs ?? []));
  const depth = o.depth ?? 0;
  if (depth === 0) return [[...common, '-p', String(o.nPrompt), '-n', String(o.nGen)]];
  const runs: string[][] = [];
  if (o.nPrompt > 0) runs.push([...common, '-p', String(o.nPrompt), '-n', '0']);
  if (o.nGen > 0) runs.push([...common, '-p', '0', '-n', String(o.nGen), '-d', String(depth)]);
  return runs;
}

/** Runs llama-bench on the CPU (`-ngl 0`) and returns its prefill and decode tokens/s. */
export async function runLlamaBench(
  binary: string,
  gguf: string,
  o: LlamaBenchOptions,
): Promise<LlamaBenchResult | Failure> {
  if (!existsSync(binary))
    return { ok: false, reason: `no llama-bench at ${binary}; run ensureLlamaBench first.` };
  if (!existsSync(gguf)) return { ok: false, reason: `no model file at ${gguf}.` };
  if ((o.depth ?? 0) > 0 && !(await llamaBenchSupportsDepth(binary))) {
    return { ok: false, reason: `${binary} has no -d/--n-depth, so it cannot decode after a context.` };
  }
  const commands = llamaBenchArgs(gguf, o);
  const tests: LlamaBenchTest[] = [];
  let peakRssKb: number | undefined;
  for (const args of commands) {
    o.log?.(`llama-bench ${args.join(' ')}`);
    let poll: { stop(): number | undefined } | undefined;
    const r = await runProcess(binary, args, {
      captureStdout: true,
      timeoutMs: o.timeoutMs ?? 30 * 60_000,
      onSpawn: (pid) => {
        poll = pollPeakRss(pid);
      },
    });
    const kb = poll?.stop();
    if (kb !== undefined) peakRssKb = Math.max(peakRssKb ?? 0, kb);
    if (r.code !== 0) return { ok: false, reason: failureReason('llama-bench', r) };
    try {
      tests.push(...parseLlamaBenchJson(r.stdout));
    } catch (e) {
      return { ok: false, reason: `cannot read llama-bench output: ${(e as Error).message}` };
    }
  }
  return { ok: true, ...summarizeLlamaBench(tests, o.depth ?? 0), tests, peakRssKb, commands };
}

// ---------------------------------------------------------------------------------------------------
// node-llama-cpp run (in a child process, so its memory and native threads are its own)

/**
 * BOS then ids counting up from 3 (past llama's unk/bos/eos), wrapping inside the vocabulary: a fixed,
 * tokenizer-free prompt that both engines can be fed id-for-id (random weights make text meaningless).
 */
export function defaultPromptIds(n: number, vocabSize = 32000, bos = 1): number[] {
  const span = Math.max(1, vocabSize - 3);
  return Array.from({ length: n }, (_, i) => (i === 0 ? bos : 3 + ((i - 1) % span)));
}

export interface NodeLlamaCppOptions {
  threads: number;
  /** KV cache length per sequence; must hold max(promptTokens, decodeDepth) + genTokens. */
  contextSize: number;
  /** Prefill test length. */
  promptTokens: number;
  /** Greedy tokens generated in the decode test. */
  genTokens: number;
  /** Decode after a context of this many tokens (the first ones of the prompt ids); default promptTokens. */
  decodeDepth?: number;
  /** Parallel sequences decoding the same context at once (batched decode); default 1. */
  sequences?: number;
  /** Token ids to use, at least max(promptTokens, decodeDepth); default defaultPromptIds. */
  promptIds?: number[];
  repetitions?: number;
  /** One unmeasured prefill + decode first, like llama-bench's warmup; default true. */
  warmup?: boolean;
  batchSize?: number;
  flashAttention?: boolean;
  cacheDir?: string;
  timeoutMs?: number;
}

/** What the child prints, after its marker, as one JSON line. */
export interface NodeLlamaCppChildReport {
  ok: true;
  prefillSeconds: number[];
  decodeSeconds: number[];
  promptTokens: number;
  decodeDepth: number;
  genTokens: number;
  sequences: number;
  /** The ids the decode test ran after, and the greedy ids sequence 0 generated. */
  contextIds: number[];
  generatedIds: number[];
  /** Whether every parallel sequence generated the same ids as sequence 0. */
  sequencesAgree: boolean;
  contextSize: number;
  threads: number;
  rss: { beforeLoadKb?: number; afterLoadKb?: number; peakKb?: number };
  build: { release: string; repo: string; buildType: string; gpu: string | false; systemInfo: string };
  model: { architecture: string; description: string; size: number; vocabSize?: number };
}

export interface NodeLlamaCppResult extends NodeLlamaCppChildReport {
  prefillTokPerS: number;
  prefillStddev: number;
  /** All sequences together: sequences * genTokens per second. */
  decodeTokPerS: number;
  decodeStddev: number;
  /** The child's VmHWM at its end (KiB): the whole Node process, model pages it touched included. */
  peakRssKb?: number;
}

/** Marks the child's result line among whatever else it prints. */
export const CHILD_RESULT_MARKER = '@@llamacpp-anchor-result ';

/** Mean and sample stddev (n - 1), as llama-bench reports its tokens/s. */
export function meanStddev(xs: number[]): { mean: number; stddev: number } {
  if (xs.length === 0) return { mean: Number.NaN, stddev: Number.NaN };
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length === 1) return { mean, stddev: 0 };
  const ss = xs.reduce((a, x) => a + (x - mean) ** 2, 0);
  return { mean, stddev: Math.sqrt(ss / (xs.length - 1)) };
}

/** The child's result line, or a failure: the reason it reported, or why there was none. */
export function readChildReport(r: ProcessResult): NodeLlamaCppChildReport | Failure {
  const line = r.stdout
    .split('\n')
    .reverse()
    .find((s) => s.startsWith(CHILD_RESULT_MARKER));
  if (!line) return { ok: false, reason: failureReason('the node-llama-cpp child', r) };
  try {
    return JSON.parse(line.slice(CHILD_RESULT_MARKER.length)) as NodeLlamaCppChildReport | Failure;
  } catch (e) {
    return { ok: false, reason: `unreadable node-llama-cpp child result: ${(e as Error).message}` };
  }
}

/** Tokens/s for the report: each repetition's rate, then mean and stddev like llama-bench. */
export function toNodeLlamaCppResult(c: NodeLlamaCppChildReport): NodeLlamaCppResult {
  const pp = meanStddev(c.prefillSeconds.map((s) => c.promptTokens / s));
  const tg = meanStddev(c.decodeSeconds.map((s) => (c.sequences * c.genTokens) / s));
  return {
    ...c,
    prefillTokPerS: pp.mean,
    prefillStddev: pp.stddev,
    decodeTokPerS: tg.mean,
    decodeStddev: tg.stddev,
    peakRssKb: c.rss.peakKb,
  };
}

/** The child's settings (everything it needs, resolved here so the child stays dumb). */
export interface NodeLlamaCppChildConfig {
  entry: string;
  gguf: string;
  threads: number;
  contextSize: number;
  promptTokens: number;
  genTokens: number;
  decodeDepth: number;
  sequences: number;
  promptIds?: number[];
  repetitions: number;
  warmup: boolean;
  batchSize?: number;
  flashAttention?: boolean;
}

/** Checks what would only fail later inside the child, with a clearer sentence. */
export function nodeLlamaCppConfig(gguf: string, o: NodeLlamaCppOptions): NodeLlamaCppChildConfig | Failure {
  const decodeDepth = o.decodeDepth ?? o.promptTokens;
  const need = Math.max(o.promptTokens, decodeDepth);
  if (decodeDepth < 1) return { ok: false, reason: 'decodeDepth must be at least 1 (the BOS token).' };
  if (o.promptIds && o.promptIds.length < need) {
    return { ok: false, reason: `promptIds has ${o.promptIds.length} ids; need ${need}.` };
  }
  if (need + o.genTokens > o.contextSize) {
    return { ok: false, reason: `contextSize ${o.contextSize} cannot hold ${need} + ${o.genTokens} tokens.` };
  }
  const l = anchorLayout(o.cacheDir);
  if (!nodeLlamaCppInstalled(l.cacheDir)) {
    return {
      ok: false,
      reason: `node-llama-cpp@${NODE_LLAMA_CPP_VERSION} is not installed in ${l.cacheDir}; run ensureNodeLlamaCpp first.`,
    };
  }
  if (!existsSync(gguf)) return { ok: false, reason: `no model file at ${gguf}.` };
  return {
    entry: join(l.packageDir, 'dist', 'index.js'),
    gguf,
    threads: o.threads,
    contextSize: o.contextSize,
    promptTokens: o.promptTokens,
    genTokens: o.genTokens,
    decodeDepth,
    sequences: o.sequences ?? 1,
    promptIds: o.promptIds?.slice(0, need),
    repetitions: o.repetitions ?? 1,
    warmup: o.warmup ?? true,
    batchSize: o.batchSize,
    flashAttention: o.flashAttention,
  };
}

/**
 * Loads the GGUF with node-llama-cpp's CPU prebuilt in a separate Node process and measures prefill
 * and greedy decode through the low-level sequence API (no chat wrapper). The child is TypeScript, run
 * through tsx's ESM loader by absolute path, so it works from tsx, vitest or plain node alike.
 */
export async function runNodeLlamaCpp(
  gguf: string,
  o: NodeLlamaCppOptions,
): Promise<NodeLlamaCppResult | Failure> {
  const config = nodeLlamaCppConfig(gguf, o);
  if ('ok' in config) return config;
  const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  const child = fileURLToPath(new URL('./llamacpp-child.ts', import.meta.url));
  const r = await runProcess(process.execPath, ['--import', tsxLoader, child, JSON.stringify(config)], {
    captureStdout: true,
    timeoutMs: o.timeoutMs ?? 30 * 60_000,
  });
  const report = readChildReport(r);
  return report.ok ? toNodeLlamaCppResult(report) : report;
}
