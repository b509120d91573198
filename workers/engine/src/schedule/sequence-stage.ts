/**
 * One sequence's view of a batched stage: a `Stage` with its own KV cache whose forwards run inside the
 * step loop's batched steps. Decoders take these exactly as they take a single-sequence OrtStage.
 */
import { forwardInChunks, type Stage, type StageInput, type StageOutput } from '../model/stage';
import type { BatchedOrtStage } from '../runtime/batched-stage';
import type { KvCache } from '../runtime/kv-cache';
import type { StepLoop } from './step-loop';

/** Rows of a prompt one step takes from one sequence (a longer prompt is prefilled over several steps). */
export const PREFILL_CHUNK_ROWS = 64;

export class SequenceStage implements Stage {
  private released = false;

  constructor(
    private readonly host: BatchedOrtStage,
    private readonly loop: StepLoop,
    private readonly cache: KvCache,
  ) {}

  get spec() {
    return this.host.spec;
  }

  get consistentRows(): number | undefined {
    return this.host.consistentRows;
  }

  get length(): number {
    return this.cache.length;
  }

  forward(input: StageInput): Promise<StageOutput> {
    if (this.released) return Promise.reject(new Error('stage used after release()'));
    const T = input.tokens?.length ?? (input.hidden?.length ?? 0) / this.host.config.dim;
    return forwardInChunks((chunk) => this.forwardChunk(chunk), input, T, PREFILL_CHUNK_ROWS);
  }

  /** Checks this sequence's own input before it joins a batch, so a bad forward fails only itself. */
  private forwardChunk(input: StageInput): Promise<StageOutput> {
    try {
      const rows = this.host.checkInput(input, this.cache);
      return this.loop.submit(this.host, { cache: this.cache, input }, rows);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  truncate(length: number): void {
    this.cache.truncate(length);
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
  }
}
