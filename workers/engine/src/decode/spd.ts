/**
 * SPD (speculative pipeline decoding, Yu et al., arXiv 2605.30852): PPSD's pipeline, but stage 1 has no
 * exit head; the draft for the token after x_t comes from the feature drafter (spd-drafter.ts), which the
 * controller runs on the main thread right after posting the tick's runs. It reads only features known
 * at the tick start (x_t's embedding, the hidden states the in-flight tokens reached, the newest finished
 * token's final state), so drafting overlaps the stages instead of adding a bubble after stage 1.
 */
import type { LlamaModel } from '../model/llama';
import type { StageSpec } from '../model/stage';
import {
  costOptionsFor,
  forwardMacs,
  type InFlight,
  PipelineDecoder,
  type PipelineDrafter,
  planBoundaries,
  specsOf,
  stageMacs,
  startStageWorkers,
} from './pipeline';
import type { DecoderContext, PipelineSetup } from './plan';
import type { Sampler } from './sampling';
import { identitySpdDrafter, SpdDrafterSession, spdFeatureLags, validateSpdDrafter } from './spd-drafter';
import { type Draft, draftFrom } from './spec-rule';
import type { OutReply } from './stage-protocol';

/**
 * Keeps, per feature depth, the hidden rows of the last few positions (copied out of the stage replies
 * before their buffers are transferred to the next stage), and drafts from them.
 */
export class SpdFeatureDrafter implements PipelineDrafter {
  private readonly dim: number;
  /** Ring buffers per feature: rows[f][pos % span], tagged with the position they hold. */
  private readonly rows: Float32Array[];
  private readonly rowPos: Int32Array[];
  private readonly span: number;
  /** For each stage, the feature indices whose depth is that stage's output (end layer). */
  private readonly byStage: number[][];
  private readonly features: Float32Array;
  private pending?: Float32Array;

  constructor(
    private readonly session: SpdDrafterSession,
    private readonly lags: number[],
    boundaries: number[],
    dim: number,
    /** Stages whose output carries their depth as `exitHidden` instead of `hidden` (the last). */
    private readonly lastStage: number,
  ) {
    this.dim = dim;
    this.span = Math.max(...lags) + 2;
    this.rows = lags.map(() => new Float32Array(this.span * dim));
    this.rowPos = lags.map(() => new Int32Array(this.span).fill(-1));
    this.byStage = boundaries.slice(1).map((_, s) => lags.flatMap((j, f) => (j === s + 1 ? [f] : [])));
    this.features = new Float32Array(lags.length * dim);
  }

  reset(): void {
    for (const p of this.rowPos) p.fill(-1);
    this.pending = undefined;
  }

  observe(stage: number, pos: number, out: OutReply): void {
    const wanted = this.byStage[stage];
    if (!wanted.length) return;
    const block = stage === this.lastStage ? out.exitHidden : out.hidden;
    if (!block) throw new Error(`spd: stage ${stage + 1} returned no hidden state for the drafter`);
    const { dim, span } = this;
    const T = block.length / dim;
    for (const f of wanted) {
      for (let r = Math.max(0, T - span); r < T; r++) {
        const p = pos + r;
        this.rows[f].set(block.subarray(r * dim, (r + 1) * dim), (p % span) * dim);
        this.rowPos[f][p % span] = p;
      }
    }
  }

  beginTick(newest: InFlight): Promise<void> {
    const { dim, span } = this;
    this.lags.forEach((lag, f) => {
      const p = newest.pos - lag;
      const slot = p >= 0 && this.rowPos[f][p % span] === p ? p % span : -1;
      const dst = this.features.subarray(f * dim, (f + 1) * dim);
      if (slot >= 0) dst.set(this.rows[f].subarray(slot * dim, (slot + 1) * dim));
      else dst.fill(0);
    });
    this.pending = undefined;
    return this.session.logits(newest.token, this.features).then((logits) => {
      this.pending = logits;
    });
  }

  draft(_stage1Out: OutReply, sampler: Sampler): Draft {
    if (!this.pending) throw new Error('spd: no draft logits for this tick');
    return draftFrom(sampler, this.pending);
  }

  close(): Promise<void> {
    return this.session.release();
  }
}

export async function createSpdDecoder(
  model: LlamaModel,
  setup: PipelineSetup & Pick<DecoderContext, 'spdDrafter'> = {},
): Promise<PipelineDecoder> {
  const k = setup.stages ?? 2;
  // no head in stage 1: the drafter runs on the controller
  let split = setup.split ?? 'balanced';
  const cost = { draftRows: 0, ...costOptionsFor(model) };
  let b = planBoundaries(model.config, k, { ...cost, exitLayer: setup.exitLayer, split });
  // A fitted drafter reads features at the depths of the plan it was fitted for: when the balanced
  // plan lacks one of them and no split was asked for, keep the equal-layer plan it fits.
  const fits = (bb: number[]) =>
    !setup.spdDrafter || setup.spdDrafter.depths.every((d) => bb.indexOf(d) >= 1);
  if (!fits(b) && setup.split === undefined) {
    const equal = planBoundaries(model.config, k, { exitLayer: setup.exitLayer, split: 'equal' });
    if (fits(equal)) {
      b = equal;
      split = 'equal';
    }
  }
  const weights = setup.spdDrafter ?? identitySpdDrafter(model.config.dim, b[k - 1]);
  validateSpdDrafter(weights, model.config.dim);
  const lags = spdFeatureLags(weights.depths, b);
  const specs: StageSpec[] = specsOf(b);
  // The final-layer feature (depth N) needs the last stage's pre-norm hidden state: an exit "after N".
  if (lags.includes(k)) specs[k - 1] = { ...specs[k - 1], exit: { afterLayer: model.config.nLayers } };
  const session = await SpdDrafterSession.create(model, weights);
  let stages: Awaited<ReturnType<typeof startStageWorkers>>;
  try {
    stages = await startStageWorkers(model, specs, setup);
  } catch (err) {
    await session.release();
    throw err;
  }
  const drafter = new SpdFeatureDrafter(session, lags, b, model.config.dim, k - 1);
  return new PipelineDecoder(stages, drafter, {
    name: 'spd',
    config: model.config,
    controlledAcceptance: setup.controlledAcceptance,
    plan: {
      boundaries: b,
      split:
        setup.exitLayer === undefined ||
        planBoundaries(model.config, k, { ...cost, split })[1] === setup.exitLayer
          ? split
          : 'fixed',
      stageMacs: stageMacs(model.config, b, cost),
      forwardMacs: forwardMacs(model.config, cost),
    },
  });
}
