/**
 * The step loop: sequences' stages submit forwards, the loop runs them as batched steps, one at a time.
 *
 * Every decoder stays a plain sequential strategy (await forward, pick, await forward ...): its forwards
 * land here, and whatever the running sequences have submitted by the time a step starts runs together.
 * A step starts on the next macrotask after the previous one ends, so each sequence whose forward just
 * returned has had its turn to pick a token and submit the next forward (a sequence that is slower to
 * come back simply joins the step after). Steps never overlap: each uses every thread the sessions have.
 */
import type { StageOutput } from '../model/stage';
import type { BatchedOrtStage, BatchItem } from '../runtime/batched-stage';
import { planStep, type StepBudget } from './step-plan';

interface Pending {
  host: BatchedOrtStage;
  item: BatchItem;
  rows: number;
  resolve: (out: StageOutput) => void;
  reject: (err: unknown) => void;
}

export class StepLoop {
  private pending: Pending[] = [];
  private busy = false;
  private scheduled = false;
  /** stepsByBatchSize[n]: steps that ran n sequences together. */
  readonly stepsByBatchSize: Record<number, number> = {};

  constructor(private readonly budget: StepBudget) {}

  /** One sequence's forward of `rows` rows; resolves when the step that ran it has finished. */
  submit(host: BatchedOrtStage, item: BatchItem, rows: number): Promise<StageOutput> {
    return new Promise((resolve, reject) => {
      this.pending.push({ host, item, rows, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.busy || this.scheduled || this.pending.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.step();
    });
  }

  private async step(): Promise<void> {
    const picked = new Set(planStep(this.pending, this.budget));
    if (picked.size === 0) return;
    const batch = this.pending.filter((_, i) => picked.has(i));
    this.pending = this.pending.filter((_, i) => !picked.has(i));
    this.busy = true;
    this.stepsByBatchSize[batch.length] = (this.stepsByBatchSize[batch.length] ?? 0) + 1;
    try {
      const outs = await batch[0].host.run(batch.map((p) => p.item));
      for (const [i, p] of batch.entries()) p.resolve(outs[i]);
    } catch (err) {
      // One bad forward (a decoder bug, an ORT error) fails only its own step's sequences.
      for (const p of batch) p.reject(err);
    } finally {
      this.busy = false;
      this.kick();
    }
  }
}
