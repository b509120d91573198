/**
 * DV (Draft & Verify, Zhang et al., arXiv 2309.08168): the draft is the model itself with a set of
 * attention / MLP sub-layers skipped; the full model verifies the drafted block in one pass.
 *
 * The draft runs as its own `Stage` over all layers with the skip set, so it has its own KV cache and
 * can never corrupt the full model's. Its cache holds the *draft model's* K/V of the verified sequence:
 * after each block it is cut back to the verified prefix it has seen, and the next block first feeds it
 * the verified tokens it has not seen yet (the corrected/bonus token, and the last accepted draft when
 * the whole block was accepted) in one forward. Drafting stops early when the draft's top-1 probability
 * falls under Draft & Verify's adaptive threshold (block.ts: ConfidenceDraftExit).
 */
import type { LlamaModel, SkipSet } from '../model/llama';
import type { Stage } from '../model/stage';
import type { BlockSpeculator } from './block';
import { forwardChain, truncateChain, verifyChain } from './chain';

/** A skip set for when none was tuned: both sub-layers of every second inner layer. */
export function defaultSkipSet(nLayers: number): SkipSet {
  const layers: number[] = [];
  for (let l = 1; l < nLayers - 1; l += 2) layers.push(l);
  return { attention: layers, mlp: [...layers] };
}

export class DvSpeculator implements BlockSpeculator {
  readonly vocabSize: number;

  constructor(
    private readonly target: Stage[], // the full model, one or more stages
    private readonly draft: Stage, // [0, N) with the skip set
    model: LlamaModel,
  ) {
    this.vocabSize = model.config.vocabSize;
  }

  async prefill(prompt: Int32Array): Promise<Float32Array> {
    truncateChain(this.target, 0);
    this.draft.truncate(0); // the draft catches up lazily in beginDraft
    return (await forwardChain(this.target, prompt, 1)).logits!;
  }

  async beginDraft(sequence: readonly number[]): Promise<Float32Array> {
    const unseen = Int32Array.from(sequence.slice(this.draft.length));
    return (await this.draft.forward({ tokens: unseen, logitRows: 1 })).logits!;
  }

  async extendDraft(token: number): Promise<Float32Array> {
    return (await this.draft.forward({ tokens: Int32Array.of(token), logitRows: 1 })).logits!;
  }

  async verify(x: number, drafts: number[]): Promise<Float32Array> {
    return (await verifyChain(this.target, Int32Array.from([x, ...drafts]))).logits!;
  }

  commit(length: number): void {
    truncateChain(this.target, length);
    this.draft.truncate(Math.min(length, this.draft.length));
  }

  async release(): Promise<void> {
    await Promise.all([...this.target.map((s) => s.release()), this.draft.release()]);
  }
}
