/**
 * PPSD (pipeline-parallel self-speculative decoding, Li et al., arXiv 2509.19368): the verify-while-draft
 * pipeline of pipeline.ts with the early-exit head at the end of stage 1 as the drafter. Stage 1's run
 * returns the exit logits of its token along with its hidden state, so the draft for the next position
 * is ready the moment the tick ends and enters stage 1 on the next tick.
 */
import type { ExitHead, LlamaModel } from '../model/llama';
import {
  PipelineDecoder,
  type PipelineDrafter,
  type StageWorkersOptions,
  specsOf,
  stageBoundaries,
  startStageWorkers,
} from './pipeline';
import type { Sampler } from './sampling';
import { type ControlledAcceptance, type Draft, draftFrom } from './spec-rule';
import type { OutReply } from './stage-protocol';

export interface PipelineSetup extends StageWorkersOptions {
  /** k, the number of stages (default 2). */
  stages?: number;
  /** E, the layer the first stage ends at (default round(N / k)). */
  exitLayer?: number;
  controlledAcceptance?: ControlledAcceptance;
}

/** Drafts from the exit logits stage 1 returns with each run. */
export class ExitHeadDrafter implements PipelineDrafter {
  reset(): void {}
  draft(stage1Out: OutReply, sampler: Sampler): Draft {
    if (!stage1Out.exitLogits) throw new Error('ppsd: stage 1 returned no exit logits');
    return draftFrom(sampler, stage1Out.exitLogits);
  }
}

export async function createPpsdDecoder(
  model: LlamaModel,
  setup: PipelineSetup & { exitHead?: ExitHead } = {},
): Promise<PipelineDecoder> {
  const E = setup.exitLayer ?? setup.exitHead?.afterLayer;
  const b = stageBoundaries(model.config.nLayers, setup.stages ?? 2, E);
  const exit: ExitHead = setup.exitHead ?? { afterLayer: b[1] };
  if (exit.afterLayer !== b[1]) {
    throw new Error(
      `ppsd: the exit head sits after layer ${exit.afterLayer}, but stage 1 ends at layer ${b[1]}`,
    );
  }
  const specs = specsOf(b);
  specs[0] = { ...specs[0], exit };
  const stages = await startStageWorkers(model, specs, setup);
  return new PipelineDecoder(stages, new ExitHeadDrafter(), {
    name: 'ppsd',
    config: model.config,
    controlledAcceptance: setup.controlledAcceptance,
  });
}
