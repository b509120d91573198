/**
 * llama.cpp's plain AR on the package's own GGUF as the decoder benchmark's outside anchor: llama-bench at
 * each thread budget, sampled before and after the decoders run (pooled), and each decoder's tokens/s
 * over llama.cpp's at the same number of threads.
 */
import { ensureLlamaBench, ensureNodeLlamaCpp, runLlamaBench } from './llamacpp';
import type { Summary } from './report';
import { median } from './stats';

export interface LlamaCppAnchorResult {
  gguf: string;
  tag?: string;
  /** Decode tokens/s samples per thread count (keys are thread counts). */
  decodeTokPerS: Record<string, number[]>;
  depth: number;
  tokens: number;
  unavailable?: string;
}

export interface LlamaCppAnchor {
  sample(when: string): Promise<void>;
  result(): LlamaCppAnchorResult;
}

export const medianLength = (prompts: ArrayLike<number>[]): number => median(prompts.map((p) => p.length));

/** Prepares llama-bench (cached) and takes the first sample at once. */
export async function llamaCppAnchor(
  gguf: string,
  threads: number[],
  tokens: number,
  depth: number,
  log: (msg: string) => void,
): Promise<LlamaCppAnchor> {
  const res: LlamaCppAnchorResult = { gguf, decodeTokPerS: {}, depth, tokens };
  const npm = await ensureNodeLlamaCpp({ log });
  const bench = npm.ok ? await ensureLlamaBench({ log }) : npm;
  if (!bench.ok) res.unavailable = bench.reason;
  else res.tag = bench.tag;
  const sample = async (when: string) => {
    if (!bench.ok) return;
    for (const t of [...new Set(threads)]) {
      const r = await runLlamaBench(bench.binary, gguf, {
        threads: t,
        nPrompt: 0,
        nGen: tokens,
        depth,
        repetitions: 2,
      });
      if (!r.ok || r.decodeTokPerS === undefined) {
        res.unavailable ??= r.ok ? 'llama-bench gave no decode result' : r.reason;
        continue;
      }
      res.decodeTokPerS[t] = [...(res.decodeTokPerS[t] ?? []), ...r.samples.decodeTokPerS];
      log(`llama.cpp ${when}, ${t} thread(s): ${r.decodeTokPerS.toFixed(1)} tok/s`);
    }
  };
  await sample('before the decoders');
  return { sample, result: () => res };
}

/** Threads a decoder row uses: the main-thread decoders one, the pipelines and AR-all-cores k. */
const threadsOf = (label: string, k: number) => (['ar-1core', 'eesd', 'dv'].includes(label) ? 1 : k);

/** Markdown: every decoder row against llama.cpp's AR at the same thread budget. */
export function anchorTable(summaries: Summary[], a: LlamaCppAnchorResult, k: number): string {
  if (a.unavailable && Object.keys(a.decodeTokPerS).length === 0)
    return `llama.cpp anchor unavailable: ${a.unavailable}`;
  const rows = [
    `llama.cpp ${a.tag ?? ''} AR on the same GGUF (llama-bench, ${a.tokens} tokens after ${a.depth}): ` +
      Object.entries(a.decodeTokPerS)
        .map(
          ([t, xs]) =>
            `${t} thread${t === '1' ? '' : 's'} ${median(xs).toFixed(1)} tok/s (${xs.map((x) => x.toFixed(1)).join(', ')})`,
        )
        .join('; '),
    '',
    '| decoder | alpha | threads | tok/s | llama.cpp AR tok/s | ratio |',
    '|---|---|---|---|---|---|',
  ];
  for (const s of summaries) {
    const t = threadsOf(s.label, k);
    const xs = a.decodeTokPerS[t];
    if (!xs?.length) continue;
    const ref = median(xs);
    rows.push(
      `| ${s.label} | ${s.alpha ?? '-'} | ${t} | ${s.tokensPerSecond.toFixed(1)} | ${ref.toFixed(1)} | ${(s.tokensPerSecond / ref).toFixed(2)} |`,
    );
  }
  return rows.join('\n');
}
