/**
 * What a package contributes to a benchmark or tuning run: the exit head, the SPD drafter and the skip
 * set stored in it (by `ppsd calibrate` / `ppsd tune-skip`), resolved for a k-stage plan.
 */
import path from 'node:path';
import { expectedSpeedup } from '../calibrate/exit-heads';
import { exitHeadFor, listExitHeads } from '../decode/heads';
import { stageBoundaries } from '../decode/pipeline';
import { loadSpdDrafter, type SpdDrafterWeights } from '../decode/spd-drafter';
import type { ExitHead, SkipSet } from '../model/llama';
import type { LoadedPackage } from '../package';

/** The skip set stored by `ppsd tune-skip`, if any. */
export function skipSetFromManifest(m: LoadedPackage['manifest']): SkipSet | undefined {
  const s = m.skipSet as { attention?: unknown; mlp?: unknown } | undefined;
  if (!s || !Array.isArray(s.attention) || !Array.isArray(s.mlp)) return undefined;
  const ints = (a: unknown[]) => a.filter((x): x is number => Number.isInteger(x));
  return { attention: ints(s.attention), mlp: ints(s.mlp) };
}

/**
 * The exit layer for k stages: `requested` if given; else the stored head with the best expected
 * speedup at its recorded acceptance; else round(N / k).
 */
export function chooseExitLayer(pkg: LoadedPackage, k: number, requested?: number): number {
  const N = pkg.model.config.nLayers;
  if (requested !== undefined) return requested;
  let best: number | undefined;
  let bestS = -1;
  for (const { layer, record } of listExitHeads(pkg.manifest)) {
    const s = expectedSpeedup(N, k, layer, record.acceptance);
    if (s !== undefined && s > bestS) {
      best = layer;
      bestS = s;
    }
  }
  return best ?? stageBoundaries(N, k)[1];
}

export interface ResolvedSetup {
  k: number;
  exitLayer: number;
  boundaries: number[];
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
): Promise<ResolvedSetup> {
  const E = chooseExitLayer(pkg, k, requestedExit);
  const boundaries = stageBoundaries(pkg.model.config.nLayers, k, E);
  const exitHead = await exitHeadFor(pkg.dir, pkg.manifest, pkg.model, E);
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
    exitHead,
    exitHeadInfo,
    skipSet: skipSetFromManifest(pkg.manifest),
    spdDrafter,
    spdDrafterInfo,
  };
}
