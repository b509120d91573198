/**
 * EESD (early-exit draft-then-verify, LayerSkip-style): stage 1 = layers [0, E) with the exit head,
 * stage 2 = layers [E, N). Drafting runs stage 1 alone, token by token; the block is then verified by
 * running only stage 2 over the layer-E hidden states stage 1 already produced (the first E layers' KV
 * entries of the drafts are reused, not recomputed). Rejected positions are cut from both caches.
 */
import type { ExitHead, LlamaModel } from '../model/llama';
import type { Stage, StageSpec } from '../model/stage';
import type { BlockSpeculator } from './block';
import { forwardRows } from './chain';

export class EesdSpeculator implements BlockSpeculator {
  readonly vocabSize: number;
  /** Layer-E hidden rows of this block's tokens already run through stage 1 (x, d_1, ...). */
  private hidden: Float32Array[] = [];

  constructor(
    private readonly draftStage: Stage, // [0, E) with the exit head
    private readonly verifyStage: Stage, // [E, N)
    model: LlamaModel,
  ) {
    this.vocabSize = model.config.vocabSize;
  }

  /** Stage specs for exit layer E (E must equal head.afterLayer when a head is given). */
  static specs(model: LlamaModel, exitLayer: number, head?: ExitHead): [StageSpec, StageSpec] {
    const N = model.config.nLayers;
    if (!Number.isInteger(exitLayer) || exitLayer < 1 || exitLayer >= N) {
      throw new RangeError(`eesd: exit layer ${exitLayer} must lie in [1, ${N - 1}]`);
    }
    const exit = head ?? { afterLayer: exitLayer };
    if (exit.afterLayer !== exitLayer)
      throw new Error(`eesd: exit head after layer ${exit.afterLayer}, expected ${exitLayer}`);
    return [
      { firstLayer: 0, endLayer: exitLayer, exit },
      { firstLayer: exitLayer, endLayer: N },
    ];
  }

  async prefill(prompt: Int32Array): Promise<Float32Array> {
    this.draftStage.truncate(0);
    this.verifyStage.truncate(0);
    this.hidden = [];
    const h = await this.draftStage.forward({ tokens: prompt, logitRows: 1 });
    const out = await this.verifyStage.forward({ hidden: h.hidden, logitRows: 1 });
    return out.logits!;
  }

  private async step(token: number): Promise<Float32Array> {
    const out = await this.draftStage.forward({ tokens: Int32Array.of(token), logitRows: 1 });
    this.hidden.push(out.hidden!);
    return out.exitLogits!;
  }

  beginDraft(sequence: readonly number[]): Promise<Float32Array> {
    return this.step(sequence[sequence.length - 1]);
  }

  extendDraft(token: number): Promise<Float32Array> {
    return this.step(token);
  }

  async verify(x: number, drafts: number[]): Promise<Float32Array> {
    // Stage 1 has run x and every draft but the last; run the rest as one block.
    const tokens = [x, ...drafts];
    const missing = tokens.slice(this.hidden.length);
    if (missing.length > 0) {
      const out = await forwardRows(
        this.draftStage,
        { tokens: Int32Array.from(missing), logitRows: 1 },
        missing.length,
      );
      this.hidden.push(out.hidden!);
    }
    const block = this.hidden.length === 1 ? this.hidden[0] : concat(this.hidden);
    this.hidden = [];
    const out = await forwardRows(
      this.verifyStage,
      { hidden: block, logitRows: tokens.length },
      tokens.length,
    );
    return out.logits!;
  }

  commit(length: number): void {
    this.draftStage.truncate(Math.min(length, this.draftStage.length));
    this.verifyStage.truncate(Math.min(length, this.verifyStage.length));
  }

  async release(): Promise<void> {
    await Promise.all([this.draftStage.release(), this.verifyStage.release()]);
  }
}

function concat(parts: Float32Array[]): Float32Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Float32Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
