/**
 * What a package contributes to a benchmark or tuning run: the exit head, the SPD drafter and the skip
 * set stored in it (by `ppsd calibrate` / `ppsd tune-skip`), resolved for a k-stage plan.
 */
import path from 'node:path';
import { costPlanSpeedup } from './bench/ideal';
import { expectedSpeedup } from './calibrate/exit-heads';
import { defaultDraftRows, draftVocabFor } from './decode/draft-vocab';
import { exitHeadFor, listExitHeads } from './decode/heads';
import {
  balancedBoundaries,
  costOptionsFor,
  forwardMacs,
  planBoundaries,
  type StageSplit,
  stageMacs,
} from './decode/pipeline';
import type { DecoderPlan } from './decode/plan';
import { loadSpdDrafter, type SpdDrafterWeights } from './decode/spd-drafter';
import type { ExitHead, SkipSet } from './model/llama';
import type { LoadedPackage } from './package';

/** The skip set stored by `ppsd tune-skip`, if any. */
export function skipSetFromManifest(m: LoadedPackage['manifest']): SkipSet | undefined {
  const s = m.skipSet as { attention?: unknown; mlp?: unknown } | undefined;
  if (!s || !Array.isArray(s.attention) || !Array.isArray(s.mlp)) return undefined;
  const ints = (a: unknown[]) => a.filter((x): x is number => Number.isInteger(x));
  return { attention: ints(s.attention), mlp: ints(s.mlp) };
}

/** What of the plan the resolution reads besides k and E (decode/plan.ts). */
export type PlanOptions = Pick<DecoderPlan, 'split' | 'draftRows'>;

/**
 * The exit layer for k stages: `requested` if given; else the stored head with the best expected
 * speedup at its recorded acceptance (balanced split: from the cost model, heads included; equal split:
 * from layer counts); else the plan's first boundary.
 */
export function chooseExitLayer(
  pkg: LoadedPackage,
  k: number,
  requested?: number,
  opts: PlanOptions = {},
): number {
  const c = pkg.model.config;
  const N = c.nLayers;
  if (requested !== undefined) return requested;
  const split = opts.split ?? 'balanced';
  const draftRows = Math.min(opts.draftRows ?? defaultDraftRows(c.vocabSize), c.vocabSize);
  let best: number | undefined;
  let bestS = -1;
  for (const { layer, record } of listExitHeads(pkg.manifest)) {
    let s: number | undefined;
    if (split === 'equal') s = expectedSpeedup(N, k, layer, record.acceptance);
    else if (N - layer >= k - 1) {
      const cost = { draftRows, draftAffine: true, ...costOptionsFor(pkg.model) };
      const b = balancedBoundaries(c, k, { ...cost, exitLayer: layer });
      s = costPlanSpeedup(record.acceptance, stageMacs(c, b, cost), forwardMacs(c, cost));
    }
    if (s !== undefined && s > bestS) {
      best = layer;
      bestS = s;
    }
  }
  return best ?? planBoundaries(c, k, { draftRows, split })[1];
}

export interface ResolvedSetup {
  k: number;
  exitLayer: number;
  boundaries: number[];
  split: StageSplit;
  /** Rows of PPSD's draft head, and the token ids when a subset. */
  draftRows: number;
  draftVocab?: Int32Array;
  draftVocabInfo: string;
  /** Modelled multiply-adds per PPSD stage and of a full forward. */
  stageMacs: number[];
  forwardMacs: number;
  exitHead: ExitHead;
  exitHeadInfo: string;
  skipSet?: SkipSet;
  spdDrafter?: SpdDrafterWeights;
  spdDrafterInfo: string;
}

export async function resolveSetup(
  pkg: LoadedPackage,
  k: number,
  requestedExit?: number,
  opts: PlanOptions = {},
): Promise<ResolvedSetup> {
  const c = pkg.model.config;
  const split = opts.split ?? 'balanced';
  const draftRows = Math.min(opts.draftRows ?? defaultDraftRows(c.vocabSize), c.vocabSize);
  const E = chooseExitLayer(pkg, k, requestedExit, { split, draftRows });
  const exitHead = await exitHeadFor(pkg.dir, pkg.manifest, pkg.model, E);
  const cost = { draftRows, draftAffine: !!exitHead.affine, ...costOptionsFor(pkg.model) };
  const boundaries = planBoundaries(c, k, { ...cost, exitLayer: E, split });
  const { vocab, source } = await draftVocabFor(pkg, draftRows);
  const rec = pkg.manifest.exitHeads?.[String(E)] as { kind?: string; acceptance?: number } | undefined;
  const exitHeadInfo = exitHead.affine
    ? `${rec?.kind ?? 'affine'} head at E=${E} (calibrated acceptance ${rec?.acceptance ?? '?'})`
    : `logit lens at E=${E} (no stored head)`;
  let spdDrafter: SpdDrafterWeights | undefined;
  let spdDrafterInfo = 'identity drafter (no fitted drafter for this plan)';
  const spd = pkg.manifest.drafters?.spd as
    | { file?: string; stages?: number; exitLayer?: number; acceptance?: number; kind?: string }
    | undefined;
  if (spd?.file && spd.stages === k && spd.exitLayer === E) {
    spdDrafter = await loadSpdDrafter(path.join(pkg.dir, spd.file));
    spdDrafterInfo = `${spd.kind ?? 'fitted'} drafter (calibrated acceptance ${spd.acceptance ?? '?'})`;
  }
  return {
    k,
    exitLayer: E,
    boundaries,
    split,
    draftRows,
    draftVocab: vocab,
    draftVocabInfo: vocab ? `${draftRows} rows: ${source}` : `full vocabulary (${c.vocabSize} rows)`,
    stageMacs: stageMacs(c, boundaries, cost),
    forwardMacs: forwardMacs(c, cost),
    exitHead,
    exitHeadInfo,
    skipSet: skipSetFromManifest(pkg.manifest),
    spdDrafter,
    spdDrafterInfo,
  };
}
