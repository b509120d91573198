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
import type { BatchItem } from '../runtime/batched-stage';
import { planStep, type StepBudget } from './step-plan';

/** What runs a step: a batched stage here in this thread (BatchedOrtStage) or in its own (StageThread). */
export interface StepHost<Item, Out extends StageOutput = StageOutput> {
  run(items: Item[]): Promise<Out[]>;
}

interface Pending<Item, Out extends StageOutput> {
  host: StepHost<Item, Out>;
  item: Item;
  rows: number;
  resolve: (out: Out) => void;
  reject: (err: unknown) => void;
}

export class StepLoop<Item = BatchItem, Out extends StageOutput = StageOutput> {
  private pending: Pending<Item, Out>[] = [];
  private busy = false;
  private scheduled = false;
  /** stepsByBatchSize[n]: steps that ran n sequences together. */
  readonly stepsByBatchSize: Record<number, number> = {};

  /**
   * @param laneCap the most sequences the next step may take, asked at each step (a pipeline stage's
   *   microbatch); absent: budget.maxLanes
   */
  constructor(
    private readonly budget: StepBudget,
    private readonly laneCap?: () => number,
  ) {}

  /** One sequence's forward of `rows` rows; resolves when the step that ran it has finished. */
  submit(host: StepHost<Item, Out>, item: Item, rows: number): Promise<Out> {
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
    const cap = this.laneCap?.();
    const budget = cap ? { ...this.budget, maxLanes: Math.min(this.budget.maxLanes, cap) } : this.budget;
    const picked = new Set(planStep(this.pending, budget));
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
