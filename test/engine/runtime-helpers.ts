/** Shared helpers for the ORT-vs-reference tests (not a test file itself). */
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import type { Stage, StageSpec } from '../../workers/engine/src/model/stage';
import { createOrtStage } from '../../workers/engine/src/runtime';

/**
 * Relative error of one row: max_i |a_i - b_i| / max_i |b_i|, with b the float64 reference.
 * The ORT-vs-reference tolerance is 1e-4 on this metric, per row.
 */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return m === 0 ? d : d / m;
}

/** Row r of a row-major [rows, n] array. */
export const row = (a: Float32Array, r: number, n: number): Float32Array => a.subarray(r * n, (r + 1) * n);

/** Every partition of [0, n) into contiguous non-empty ranges (2^(n-1) of them). */
export function splits(n: number): [number, number][][] {
  const out: [number, number][][] = [];
  for (let mask = 0; mask < 1 << (n - 1); mask++) {
    const parts: [number, number][] = [];
    let start = 0;
    for (let b = 1; b < n; b++) {
      if (mask & (1 << (b - 1))) {
        parts.push([start, b]);
        start = b;
      }
    }
    parts.push([start, n]);
    out.push(parts);
  }
  return out;
}

/** ORT stages memoized by spec (a test truncates them to 0 before reuse). */
export class StagePool {
  private readonly stages = new Map<string, Promise<Stage>>();
  private readonly affineIds = new Map<object, number>();
  constructor(
    private readonly model: LlamaModel,
    private readonly maxSeqLen = 32,
    private readonly attention: 'fused' | 'standard' = 'fused',
    private readonly kvCache: 'host' | 'device' = 'host',
  ) {}

  get(spec: StageSpec): Promise<Stage> {
    const affine = spec.exit?.affine;
    if (affine && !this.affineIds.has(affine)) this.affineIds.set(affine, this.affineIds.size + 1);
    const key = JSON.stringify({
      ...spec,
      exit: spec.exit && { ...spec.exit, affine: affine && this.affineIds.get(affine) },
    });
    let s = this.stages.get(key);
    if (!s) {
      s = createOrtStage(this.model, spec, {
        threads: 1,
        maxSeqLen: this.maxSeqLen,
        attention: this.attention,
        kvCache: this.kvCache,
      });
      this.stages.set(key, s);
    }
    return s;
  }

  async releaseAll(): Promise<void> {
    for (const s of this.stages.values()) await (await s).release();
    this.stages.clear();
  }
}

export interface PipelineOut {
  logits: Float32Array;
  exitLogits?: Float32Array;
  exitHidden?: Float32Array;
}

/** One forward of `tokens` through a chain of stages (exit outputs from whichever stage has the head). */
export async function pipelineForward(
  stages: Stage[],
  tokens: number[],
  logitRows?: number,
): Promise<PipelineOut> {
  let hidden: Float32Array | undefined;
  const res: Partial<PipelineOut> = {};
  for (const [i, s] of stages.entries()) {
    const out = await s.forward(
      i === 0 ? { tokens: Int32Array.from(tokens), logitRows } : { hidden, logitRows },
    );
    hidden = out.hidden;
    if (out.exitLogits) {
      res.exitLogits = out.exitLogits;
      res.exitHidden = out.exitHidden;
    }
    if (out.logits) res.logits = out.logits;
  }
  return res as PipelineOut;
}
