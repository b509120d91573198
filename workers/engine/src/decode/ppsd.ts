/**
 * PPSD (pipeline-parallel self-speculative decoding, Li et al., arXiv 2509.19368): the verify-while-draft
 * pipeline of pipeline.ts with the early-exit head at the end of stage 1 as the drafter. Stage 1's run
 * returns the exit logits of its token along with its hidden state, so the draft for the next position
 * is ready the moment the tick ends and enters stage 1 on the next tick.
 *
 * Plan: by default the stage boundaries equalise the modelled cost per stage (pipeline.ts
 * `balancedBoundaries`: stage 1 carries the draft head, the last stage the classifier), so E = b[1] may
 * differ from N / k; `split: 'equal'` keeps equal layer counts. The draft head may score only a
 * frequency-ranked subset of the vocabulary (`draftVocab`): q is zero outside it, so the speculative rule
 * stays exact (a drafted token always has q > 0), and greedy drafts the argmax within the subset.
 */
import type { ExitHead, LlamaModel } from '../model/llama';
import { selectRows } from '../model/matrix';
import type { StageSpec } from '../model/stage';
import {
  costOptionsFor,
  forwardMacs,
  PipelineDecoder,
  type PipelineDrafter,
  type PipelineOptions,
  planBoundaries,
  specsOf,
  stageMacs,
  startStageWorkers,
  sublayerSpecs,
  sublayerSplit,
  sublayerStageMacs,
} from './pipeline';
import type { DecoderContext, PipelineSetup } from './plan';
import type { Sampler } from './sampling';
import { type Draft, draftFrom } from './spec-rule';
import type { OutReply } from './stage-protocol';

/** Drafts from the exit logits stage 1 returns with each run. */
export class ExitHeadDrafter implements PipelineDrafter {
  /**
   * @param vocab the token ids the exit logits score (column i = token vocab[i]); absent: the whole vocabulary
   * @param vocabSize the model's vocabulary (q is expanded to it for the sampling rule)
   */
  constructor(
    private readonly vocab?: Int32Array,
    private readonly vocabSize = 0,
  ) {}
  reset(): void {}
  draft(stage1Out: OutReply, sampler: Sampler): Draft {
    const logits = stage1Out.exitLogits;
    if (!logits) throw new Error('ppsd: stage 1 returned no exit logits');
    const vocab = this.vocab;
    if (!vocab) return draftFrom(sampler, logits);
    if (sampler.greedy) return { token: vocab[sampler.best(logits, vocab)] };
    return subsetDraft(sampler, logits, vocab, this.vocabSize);
  }
}

/** A sampled draft over a vocabulary subset, with q expanded to the full vocabulary (zero outside it). */
export function subsetDraft(
  sampler: Sampler,
  logits: ArrayLike<number>,
  vocab: Int32Array,
  vocabSize: number,
): Draft {
  const qSub = sampler.distribution(logits, vocab);
  const token = vocab[sampler.draw(qSub)];
  const q = new Float64Array(vocabSize);
  for (let i = 0; i < vocab.length; i++) q[vocab[i]] = qSub[i];
  return { token, q };
}

/** The exit head with its classifier restricted to `vocab` (the rows gathered into their own weight). */
export function withDraftVocab(model: LlamaModel, exit: ExitHead, vocab: Int32Array | undefined): ExitHead {
  if (!vocab || vocab.length >= model.config.vocabSize)
    return { afterLayer: exit.afterLayer, affine: exit.affine };
  const { vocabSize } = model.config;
  const cls = model.weights.classifier;
  for (const t of vocab) {
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize)
      throw new RangeError(`draft vocabulary: token ${t} outside [0, ${vocabSize})`);
  }
  // the rows keep the classifier's storage (a row gather is exact for every dtype), so a q4 draft head
  // reads an eighth of the bytes an f32 copy would
  return { ...exit, vocab, classifierRows: selectRows(cls, vocab) };
}

/** What a PPSD pipeline is built from: its stage specs (stage 1 with the draft head), drafter and options. */
export interface PpsdPlan {
  specs: StageSpec[];
  /** A fresh drafter (one per decoder: a drafter may keep per-generation state). */
  drafter(): PipelineDrafter;
  options: PipelineOptions;
}

export type PpsdSetup = PipelineSetup & Pick<DecoderContext, 'exitHead' | 'draftVocab' | 'sublayer'>;

export async function createPpsdDecoder(model: LlamaModel, setup: PpsdSetup = {}): Promise<PipelineDecoder> {
  const plan = planPpsd(model, setup);
  const stages = await startStageWorkers(model, plan.specs, setup);
  return new PipelineDecoder(stages, plan.drafter(), plan.options);
}

/**
 * The PPSD plan: stage boundaries (balanced by modelled cost, possibly inside a layer), the exit head at
 * the end of stage 1 and the drafter reading it. Pure: nothing is started (createPpsdDecoder starts one
 * Worker per stage; the engine's PipelineServer runs the same specs as batched stage threads).
 */
export function planPpsd(model: LlamaModel, setup: PpsdSetup = {}): PpsdPlan {
  const c = model.config;
  const k = setup.stages ?? 2;
  const E = setup.exitLayer ?? setup.exitHead?.afterLayer;
  const vocab = setup.draftVocab && setup.draftVocab.length < c.vocabSize ? setup.draftVocab : undefined;
  const cost = {
    draftRows: vocab?.length ?? c.vocabSize,
    draftAffine: !!setup.exitHead?.affine,
    ...costOptionsFor(model),
  };
  const split = setup.split ?? 'balanced';
  const b = planBoundaries(c, k, { ...cost, exitLayer: E, split });
  const base: ExitHead = setup.exitHead ?? { afterLayer: b[1] };
  if (base.afterLayer !== b[1]) {
    throw new Error(
      `ppsd: the exit head sits after layer ${base.afterLayer}, but stage 1 ends at layer ${b[1]}`,
    );
  }
  // Split inside a layer when that balances better (logit lens only: a stored head expects whole layers).
  const sl =
    setup.sublayer !== false &&
    split === 'balanced' &&
    !setup.exitHead?.affine &&
    (E === undefined || E === planBoundaries(c, k, { ...cost, split })[1])
      ? sublayerSplit(c, k, cost)
      : undefined;
  const exit = withDraftVocab(model, sl === undefined ? base : { afterLayer: sl + 1 }, vocab);
  const specs = sl === undefined ? specsOf(b) : sublayerSpecs(c.nLayers, sl);
  if (sl !== undefined) b[1] = sl;
  specs[0] = { ...specs[0], exit };
  const options: PipelineOptions = {
    name: 'ppsd',
    config: c,
    controlledAcceptance: setup.controlledAcceptance,
    plan: {
      boundaries: b,
      split: E === undefined || planBoundaries(c, k, { ...cost, split })[1] === E ? split : 'fixed',
      draftRows: cost.draftRows,
      stageMacs: sl === undefined ? stageMacs(c, b, cost) : sublayerStageMacs(c, sl, cost),
      forwardMacs: forwardMacs(c, cost),
      splitLayer: sl,
    },
  };
  return { specs, drafter: () => new ExitHeadDrafter(vocab, c.vocabSize), options };
}
