/**
 * The decoder benchmark's measurement loop: every decoder runs the same prompts, interleaved
 * round-robin inside one process (AR baselines first in each round, then the other decoders in a
 * rotated order), greedy, repeated; the JSON keeps every run and `summarize` turns them into medians.
 *
 * Timing: `decodeMs` runs from the first emitted token to the last (the prompt's prefill and the
 * first token are excluded, so tokens/s is the steady decoding rate; `totalMs` includes them).
 */
import { performance } from 'node:perf_hooks';
import type { ControlledAcceptance, Decoder, SpeculationStats } from '../decode/decoder';
import { Sampler } from '../decode/sampling';

export interface BenchDecoder {
  /** Row label: 'ar-1core', 'ar-all-cores', 'eesd', 'dv', 'ppsd', 'spd'. */
  label: string;
  decoder: Decoder;
  /** Speculative decoders take controlled acceptance; the AR baselines never do. */
  speculative: boolean;
}

export interface RunRecord {
  label: string;
  alpha: number | null; // controlled acceptance, null = real drafts
  prompt: number;
  repeat: number;
  tokens: number;
  decodeMs: number;
  totalMs: number;
  stats: SpeculationStats;
  /** Greedy output equals the AR reference (losslessness check; undefined for AR itself). */
  matchesAr?: boolean;
}

export interface HarnessOptions {
  prompts: Int32Array[];
  maxTokens: number;
  repeats: number;
  /** Controlled-acceptance rates; empty = real drafts. */
  alphas: number[];
  seed?: number;
  /** One warm-up generation per decoder before measuring (JIT, session first-run allocations). */
  warmup?: boolean;
  log?: (msg: string) => void;
}

/** Runs one greedy generation and times it. */
export async function timeGeneration(
  decoder: Decoder,
  prompt: Int32Array,
  maxTokens: number,
  controlledAcceptance?: ControlledAcceptance,
): Promise<{ tokens: number[]; decodeMs: number; totalMs: number; stats: SpeculationStats }> {
  const sampler = new Sampler({ temperature: 0, topP: 1, seed: 1 });
  const gen = decoder.decode({ prompt, maxTokens, sampler, controlledAcceptance });
  const tokens: number[] = [];
  const t0 = performance.now();
  let tFirst = 0;
  let r = await gen.next();
  while (!r.done) {
    if (tokens.length === 0) tFirst = performance.now();
    tokens.push(...r.value);
    r = await gen.next();
  }
  const t1 = performance.now();
  return { tokens, decodeMs: t1 - tFirst, totalMs: t1 - t0, stats: r.value };
}

/**
 * The measurement loop. AR references (greedy continuations) come from the first decoder, which must
 * be AR; in controlled mode they are what the drafts are replaced by with probability alpha.
 */
export async function runHarness(decoders: BenchDecoder[], o: HarnessOptions): Promise<RunRecord[]> {
  const log = o.log ?? (() => {});
  const ar = decoders[0];
  if (ar.speculative) throw new Error('the first benchmark decoder must be an AR baseline');
  // AR references, also the warm-up of the first AR decoder
  const refs: number[][] = [];
  for (const p of o.prompts) refs.push((await timeGeneration(ar.decoder, p, o.maxTokens)).tokens);
  if (o.warmup ?? true) {
    for (const d of decoders.slice(1)) {
      const ctl =
        d.speculative && o.alphas.length > 0 ? { alpha: o.alphas[0], seed: 7, arTokens: refs[0] } : undefined;
      await timeGeneration(d.decoder, o.prompts[0], Math.min(8, o.maxTokens), ctl);
    }
  }
  const baselines = decoders.filter((d) => !d.speculative);
  const spec = decoders.filter((d) => d.speculative);
  const alphas: (number | null)[] = o.alphas.length > 0 ? o.alphas : [null];
  const records: RunRecord[] = [];
  const total = o.repeats * o.prompts.length * (baselines.length + spec.length * alphas.length);
  let done = 0;
  for (let rep = 0; rep < o.repeats; rep++) {
    for (let pi = 0; pi < o.prompts.length; pi++) {
      const prompt = o.prompts[pi];
      const round: { d: BenchDecoder; alpha: number | null }[] = baselines.map((d) => ({ d, alpha: null }));
      // rotate the speculative decoders' order each round so no decoder always runs right after AR
      const shift = (rep * o.prompts.length + pi) % Math.max(spec.length, 1);
      const rotated = [...spec.slice(shift), ...spec.slice(0, shift)];
      for (const alpha of alphas) for (const d of rotated) round.push({ d, alpha });
      for (const { d, alpha } of round) {
        const ctl =
          alpha === null ? undefined : { alpha, seed: 1000 * rep + 17 * pi + 1, arTokens: refs[pi] };
        const res = await timeGeneration(d.decoder, prompt, o.maxTokens, d.speculative ? ctl : undefined);
        const rec: RunRecord = {
          label: d.label,
          alpha: d.speculative ? alpha : null,
          prompt: pi,
          repeat: rep,
          tokens: res.tokens.length,
          decodeMs: res.decodeMs,
          totalMs: res.totalMs,
          stats: res.stats,
        };
        if (d !== ar) rec.matchesAr = sameTokens(res.tokens, refs[pi]);
        records.push(rec);
        done++;
        log(
          `[${done}/${total}] repeat ${rep + 1} prompt ${pi + 1} ${d.label}${rec.alpha === null ? '' : ` alpha=${rec.alpha}`}: ` +
            `${rec.tokens} tokens, ${((1000 * Math.max(rec.tokens - 1, 0)) / Math.max(rec.decodeMs, 1e-9)).toFixed(1)} tok/s` +
            (rec.matchesAr === false ? ' (OUTPUT DIFFERS FROM AR)' : ''),
        );
      }
    }
  }
  return records;
}

const sameTokens = (a: number[], b: number[]) => a.length === b.length && a.every((t, i) => t === b[i]);
