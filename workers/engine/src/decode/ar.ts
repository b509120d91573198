import type { Stage } from '../model/stage';
import { forwardChain, truncateChain } from './chain';
import { type DecodeRequest, type Decoder, type SpeculationStats, startStats } from './decoder';

/**
 * Plain autoregressive decoding: prefill the prompt as one block, then one full forward per token.
 * The baseline every speculative decoder is checked against (greedy: token for token) and divided by.
 */
export class ArDecoder implements Decoder {
  readonly name = 'ar' as const;
  constructor(private readonly stages: Stage[]) {}

  async *decode(request: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void> {
    const { prompt, maxTokens, sampler, signal } = request;
    const stats = startStats(request, 'ar');
    truncateChain(this.stages, 0);
    let out = await forwardChain(this.stages, prompt, 1);
    while (stats.tokens < maxTokens && !signal?.aborted) {
      const next = sampler.pick(out.logits!);
      stats.tokens++;
      stats.verifications++;
      yield [next];
      if (stats.tokens >= maxTokens || signal?.aborted) break;
      out = await forwardChain(this.stages, Int32Array.of(next), 1);
    }
    return stats;
  }

  async close(): Promise<void> {
    await Promise.all(this.stages.map((s) => s.release()));
  }
}
