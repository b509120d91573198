/**
 * Draft & Verify's skip-set search: which attention / MLP sub-layers the draft leaves out, chosen by the
 * *measured* speed of the DV decoder (the paper uses Bayesian optimisation with the same objective).
 *
 * Greedy forward selection with a beam of one: starting from a seed set, each step measures every set
 * that skips one more sub-layer (never the first or last layer, whose removal wrecks the draft), keeps
 * the fastest if it beats the current best by more than `minGain` (the first step always takes one: the
 * empty seed is only a reference, a draft must skip something), and stops when none does or the
 * evaluation budget is spent. Every candidate's score is a ratio to AR measured right next to it, so
 * slow drift of the machine's load cancels out.
 */
import type { SkipSet } from '../model/llama';

export interface SkipScore {
  /** DV tokens/s over AR tokens/s measured in the same round (the objective). */
  speedup: number;
  tokensPerSecond: number;
  acceptance: number;
}

export interface SkipCandidate extends SkipScore {
  skip: SkipSet;
}

export interface SkipSearchOptions {
  nLayers: number;
  maxEvaluations: number;
  /** Relative improvement a step must bring to be taken (default 0.02). */
  minGain?: number;
  seed?: SkipSet;
  log?: (msg: string) => void;
}

export const skipKey = (s: SkipSet): string =>
  `attn[${[...s.attention].sort((a, b) => a - b).join(',')}] mlp[${[...s.mlp].sort((a, b) => a - b).join(',')}]`;

/** Sub-layers the search may skip: attention and MLP of layers 1 .. N-2 (0-based). */
export function skippableSubLayers(nLayers: number): { kind: 'attention' | 'mlp'; layer: number }[] {
  const out: { kind: 'attention' | 'mlp'; layer: number }[] = [];
  for (let l = 1; l < nLayers - 1; l++) {
    out.push({ kind: 'attention', layer: l });
    out.push({ kind: 'mlp', layer: l });
  }
  return out;
}

export async function searchSkipSet(
  evaluate: (skip: SkipSet) => Promise<SkipScore>,
  o: SkipSearchOptions,
): Promise<{ best: SkipCandidate; tried: SkipCandidate[] }> {
  const log = o.log ?? (() => {});
  const minGain = o.minGain ?? 0.02;
  const tried: SkipCandidate[] = [];
  const seen = new Set<string>();
  const score = async (skip: SkipSet): Promise<SkipCandidate> => {
    const s = await evaluate(skip);
    const c = { skip, ...s };
    tried.push(c);
    seen.add(skipKey(skip));
    log(
      `[${tried.length}/${o.maxEvaluations}] ${skipKey(skip)}: ${s.tokensPerSecond.toFixed(1)} tok/s, speedup ${s.speedup.toFixed(3)}, acceptance ${s.acceptance.toFixed(3)}`,
    );
    return c;
  };
  let best = await score(o.seed ?? { attention: [], mlp: [] });
  const options = skippableSubLayers(o.nLayers);
  while (tried.length < o.maxEvaluations) {
    let stepBest: SkipCandidate | undefined;
    for (const opt of options) {
      if (tried.length >= o.maxEvaluations) break;
      if (best.skip[opt.kind].includes(opt.layer)) continue;
      const next: SkipSet = { attention: [...best.skip.attention], mlp: [...best.skip.mlp] };
      next[opt.kind] = [...next[opt.kind], opt.layer].sort((a, b) => a - b);
      if (seen.has(skipKey(next))) continue;
      const c = await score(next);
      if (!stepBest || c.speedup > stepBest.speedup) stepBest = c;
    }
    const empty = best.skip.attention.length + best.skip.mlp.length === 0;
    // an empty set is only the reference point: a DV draft must leave something out
    if (!stepBest || (!empty && stepBest.speedup <= best.speedup * (1 + minGain))) break;
    best = stepBest;
    log(`step: keep ${skipKey(best.skip)} (speedup ${best.speedup.toFixed(3)})`);
  }
  return { best, tried };
}
