/**
 * The node-llama-cpp side of the llama.cpp anchor, run by `runNodeLlamaCpp` as its own Node process
 * (argv[2]: a NodeLlamaCppChildConfig as JSON) so that its peak RSS and native threads are its own.
 * Prints one `CHILD_RESULT_MARKER` line with a NodeLlamaCppChildReport, or `{ ok: false, reason }`.
 *
 * node-llama-cpp is imported by absolute path from the anchor's cache folder (it is not a dependency
 * of this repo), so the few parts of its API used here are typed by hand below (3.22's .d.ts).
 */

import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import {
  CHILD_RESULT_MARKER,
  defaultPromptIds,
  type NodeLlamaCppChildConfig,
  type NodeLlamaCppChildReport,
} from './llamacpp';

interface Sequence {
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(
    tokens: number[],
    options: { temperature: number; yieldEogToken: boolean },
  ): AsyncGenerator<number, void, undefined>;
  clearHistory(): Promise<void>;
}
interface Context {
  contextSize: number;
  currentThreads: number;
  getSequence(): Sequence;
  dispose(): Promise<void>;
}
interface Model {
  architecture?: string;
  typeDescription: string;
  size: number;
  tokens: { bos: number | null };
  fileInfo: { metadata?: { tokenizer?: { ggml?: { tokens?: unknown[] } } } };
  createContext(o: {
    contextSize: number;
    threads: number;
    sequences: number;
    batchSize?: number;
    flashAttention?: boolean;
  }): Promise<Context>;
  dispose(): Promise<void>;
}
interface Llama {
  gpu: string | false;
  buildType: string;
  llamaCppRelease: { repo: string; release: string };
  systemInfo: string;
  loadModel(o: { modelPath: string; gpuLayers: number }): Promise<Model>;
  dispose(): Promise<void>;
}
interface NodeLlamaCpp {
  getLlama(o: Record<string, unknown>): Promise<Llama>;
}

function vm(field: 'VmRSS' | 'VmHWM'): number | undefined {
  const m = new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : undefined;
}

function emit(report: NodeLlamaCppChildReport | { ok: false; reason: string }): void {
  process.stdout.write(`${CHILD_RESULT_MARKER}${JSON.stringify(report)}\n`);
}

/** Seconds to prefill `ids` into an empty sequence. */
async function timePrefill(seq: Sequence, ids: number[]): Promise<number> {
  await seq.clearHistory();
  const t0 = performance.now();
  await seq.evaluateWithoutGeneratingNewTokens(ids);
  return (performance.now() - t0) / 1000;
}

/**
 * Puts all but the last context id into the cache (untimed), then times `n` single-token forwards:
 * the last context id, then each greedy token fed back in. Every yield of `evaluate` is one forward
 * plus an argmax (temperature 0), so this is llama-bench's tg shape, after a context like its -d.
 */
async function prepareDecode(seq: Sequence, context: number[]): Promise<void> {
  await seq.clearHistory();
  if (context.length > 1) await seq.evaluateWithoutGeneratingNewTokens(context.slice(0, -1));
}

async function greedy(seq: Sequence, last: number, n: number): Promise<number[]> {
  const out: number[] = [];
  if (n <= 0) return out;
  // yieldEogToken: random weights may well pick EOS, which must not end the run early
  for await (const t of seq.evaluate([last], { temperature: 0, yieldEogToken: true })) {
    out.push(t);
    if (out.length >= n) break;
  }
  return out;
}

/** All sequences decode the same context at once (node-llama-cpp batches their steps together). */
async function timeDecode(seqs: Sequence[], context: number[], n: number) {
  await Promise.all(seqs.map((s) => prepareDecode(s, context)));
  const t0 = performance.now();
  const ids = await Promise.all(seqs.map((s) => greedy(s, context[context.length - 1], n)));
  return { seconds: (performance.now() - t0) / 1000, ids };
}

async function main(c: NodeLlamaCppChildConfig): Promise<NodeLlamaCppChildReport> {
  const beforeLoadKb = vm('VmRSS');
  const nlc = (await import(pathToFileURL(c.entry).href)) as NodeLlamaCpp;
  // CPU prebuilt only: never download or compile llama.cpp; maxThreads 0 makes `threads` exact
  const llama = await nlc.getLlama({
    gpu: false,
    build: 'never',
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    logLevel: 'error',
    maxThreads: 0,
  });
  const model = await llama.loadModel({ modelPath: c.gguf, gpuLayers: 0 });
  const vocabSize = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
  const ctx = await model.createContext({
    contextSize: c.contextSize,
    threads: c.threads,
    sequences: c.sequences,
    batchSize: c.batchSize,
    flashAttention: c.flashAttention,
  });
  const afterLoadKb = vm('VmRSS');
  const seqs = Array.from({ length: c.sequences }, () => ctx.getSequence());
  const ids =
    c.promptIds ??
    defaultPromptIds(Math.max(c.promptTokens, c.decodeDepth), vocabSize, model.tokens.bos ?? 1);
  const prompt = ids.slice(0, c.promptTokens);
  const context = ids.slice(0, c.decodeDepth);

  if (c.warmup) {
    if (prompt.length > 0) await timePrefill(seqs[0], prompt);
    await timeDecode(seqs, context, 1);
  }
  const prefillSeconds: number[] = [];
  const decodeSeconds: number[] = [];
  let generated: number[][] = [];
  for (let r = 0; r < c.repetitions; r++) {
    if (prompt.length > 0) prefillSeconds.push(await timePrefill(seqs[0], prompt));
    const d = await timeDecode(seqs, context, c.genTokens);
    decodeSeconds.push(d.seconds);
    generated = d.ids;
  }
  const report: NodeLlamaCppChildReport = {
    ok: true,
    prefillSeconds,
    decodeSeconds,
    promptTokens: prompt.length,
    decodeDepth: context.length,
    genTokens: c.genTokens,
    sequences: c.sequences,
    contextIds: context,
    generatedIds: generated[0] ?? [],
    sequencesAgree: generated.every((g) => g.join() === generated[0].join()),
    contextSize: ctx.contextSize,
    threads: ctx.currentThreads,
    rss: { beforeLoadKb, afterLoadKb, peakKb: vm('VmHWM') },
    build: {
      release: llama.llamaCppRelease.release,
      repo: llama.llamaCppRelease.repo,
      buildType: llama.buildType,
      gpu: llama.gpu,
      systemInfo: llama.systemInfo,
    },
    model: {
      architecture: String(model.architecture),
      description: model.typeDescription,
      size: model.size,
      vocabSize,
    },
  };
  await ctx.dispose();
  await model.dispose();
  await llama.dispose();
  return report;
}

main(JSON.parse(process.argv[2]) as NodeLlamaCppChildConfig).then(
  (report) => {
    emit(report);
    process.exit(0);
  },
  (e: unknown) => {
    emit({ ok: false, reason: `node-llama-cpp: ${e instanceof Error ? e.message : String(e)}` });
    process.exit(1);
  },
);
