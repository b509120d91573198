/**
 * Draft-then-verify over blocks, the loop EESD and DV share: draft up to gamma tokens with a cheap
 * drafter, verify the whole block with one target pass, keep the longest accepted prefix plus one token
 * from the target (the replacement of the first rejected draft, or the bonus token after a fully accepted
 * block), and cut every cache back to the verified sequence. What differs between decoders is only how
 * drafts are made and how a block is verified (`BlockSpeculator`) and how long blocks are
 * (`DraftLengthPolicy`).
 */
import {
  type DecodeRequest,
  type Decoder,
  type DecoderName,
  SingleGeneration,
  type SpeculationStats,
  startStats,
} from './decoder';
import { row, type Sampler } from './sampling';
import { type ControlledAcceptance, ControlledDrafts, type Draft, draftFrom, judge } from './spec-rule';

/** How one decoder drafts and verifies. Positions are implicit: caches hold the verified prefix. */
export interface BlockSpeculator {
  readonly vocabSize: number;
  /** Start of a generation: forget every cached position, then run the prompt; last row's target logits. */
  prefill(prompt: Int32Array): Promise<Float32Array>;
  /**
   * First draft step of a block: `sequence` is every verified token, its last one (x) not yet in the
   * target's cache. Returns draft logits for the position after x.
   */
  beginDraft(sequence: readonly number[]): Promise<Float32Array>;
  /** Next draft step after drafted `token`: draft logits for the position after it. */
  extendDraft(token: number): Promise<Float32Array>;
  /** Target logits [1 + drafts.length, vocab] for the rows x, d_1 .. d_gamma. */
  verify(x: number, drafts: number[]): Promise<Float32Array>;
  /** Keep `length` verified positions in every cache. */
  commit(length: number): void;
  release(): Promise<void>;
}

/** How many drafts a block gets. */
export interface DraftLengthPolicy {
  /** What the stats report: the fixed γ, or 'adaptive'. */
  readonly setting: number | 'adaptive';
  /** Most drafts for the next block. */
  maxDrafts(): number;
  /** Whether a freshly drafted token (with its top-1 probability) joins the block; the first always does. */
  keepDrafting?(confidence: number): boolean;
  /** After verification: `drafted` drafts in the block, the first `accepted` of them accepted. */
  update(drafted: number, accepted: number): void;
}

export class FixedDraftLength implements DraftLengthPolicy {
  readonly setting: number;
  constructor(private readonly gamma: number) {
    if (!Number.isInteger(gamma) || gamma < 1)
      throw new RangeError(`draft length must be a positive integer, got ${gamma}`);
    this.setting = gamma;
  }
  maxDrafts(): number {
    return this.gamma;
  }
  update(): void {}
}

/** Grows the block by one after a fully accepted block, shrinks it by one after an early rejection. */
export class AdaptiveDraftLength implements DraftLengthPolicy {
  readonly setting = 'adaptive';
  private gamma: number;
  constructor(
    initial = 4,
    private readonly max = 16,
  ) {
    this.gamma = initial;
  }
  maxDrafts(): number {
    return this.gamma;
  }
  update(drafted: number, accepted: number): void {
    if (drafted === 0) return;
    this.gamma = accepted === drafted ? Math.min(this.max, this.gamma + 1) : Math.max(1, this.gamma - 1);
  }
}

/**
 * Draft & Verify's adaptive draft-exiting (Zhang et al., 2309.08168, sec. 3.3): stop drafting when the
 * draft's top-1 probability falls under a threshold; the threshold follows the running acceptance rate
 * (raised while acceptance is under the target rate, lowered while above), both smoothed.
 */
export class ConfidenceDraftExit implements DraftLengthPolicy {
  readonly setting = 'adaptive';
  private threshold: number;
  private rate: number;
  constructor(
    private readonly max = 12,
    private readonly targetRate = 0.8,
    initialThreshold = 0.5,
    private readonly step = 0.01,
    private readonly smoothing = 0.5,
  ) {
    this.threshold = initialThreshold;
    this.rate = targetRate;
  }
  maxDrafts(): number {
    return this.max;
  }
  keepDrafting(confidence: number): boolean {
    return confidence >= this.threshold;
  }
  update(drafted: number, accepted: number): void {
    if (drafted === 0) return;
    const b = this.smoothing;
    this.rate = b * this.rate + (1 - b) * (accepted / drafted);
    const target = this.rate <= this.targetRate ? this.threshold + this.step : this.threshold - this.step;
    this.threshold = Math.min(1, Math.max(0, b * this.threshold + (1 - b) * target));
  }
  /** Current threshold (for logs and tests). */
  get currentThreshold(): number {
    return this.threshold;
  }
}

/** Top-1 probability of a logits row under the sampler's own distribution (softmax when greedy). */
function confidence(sampler: Sampler, logits: Float32Array, draft: Draft): number {
  if (draft.q) return draft.q[draft.token];
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return sampler.greedy ? 1 / sum : Math.exp(logits[draft.token] - max) / sum;
}

export interface BlockDecoderOptions {
  name: Extract<DecoderName, 'eesd' | 'dv'>;
  /** A fresh policy per generation (policies adapt within one generation). */
  policy: () => DraftLengthPolicy;
  controlledAcceptance?: ControlledAcceptance;
}

export class BlockDecoder implements Decoder {
  readonly name: 'eesd' | 'dv';
  private readonly single = new SingleGeneration();
  private closed = false;
  /** The stage call in progress, so close() never releases a session under a running forward. */
  private inFlight: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly speculator: BlockSpeculator,
    private readonly opts: BlockDecoderOptions,
  ) {
    this.name = opts.name;
  }

  decode(request: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void> {
    return this.single.run(
      this.name,
      () => this.closed,
      () => this.run(request),
    );
  }

  private async *run(request: DecodeRequest): AsyncGenerator<number[], SpeculationStats, void> {
    const { prompt, maxTokens, sampler, signal } = request;
    const spec = this.guarded();
    const stats = startStats(request, this.name);
    if (maxTokens <= 0 || signal?.aborted) return stats;
    if (this.closed) throw new Error(`${this.name} decoder is closed`);
    const policy: DraftLengthPolicy =
      request.draftLength === undefined ? this.opts.policy() : new FixedDraftLength(request.draftLength);
    stats.draftLength = policy.setting;
    const controlledSetting = request.controlledAcceptance ?? this.opts.controlledAcceptance;
    const controlled = controlledSetting
      ? new ControlledDrafts(controlledSetting, prompt.length, this.speculator.vocabSize)
      : undefined;

    const first = sampler.pick(await spec.prefill(prompt));
    const sequence = [...prompt, first];
    stats.tokens = 1;
    stats.verifications = 1;
    yield [first];

    while (stats.tokens < maxTokens && !signal?.aborted && !this.closed) {
      const x = sequence[sequence.length - 1];
      const xPos = sequence.length - 1;
      // Never draft past maxTokens: each block emits at most drafts + 1 tokens.
      const maxDrafts = Math.min(policy.maxDrafts(), maxTokens - stats.tokens - 1);
      const drafts: Draft[] = [];
      if (maxDrafts > 0) {
        let logits = await spec.beginDraft(sequence);
        for (;;) {
          let draft = draftFrom(sampler, logits);
          if (
            drafts.length > 0 &&
            policy.keepDrafting &&
            !policy.keepDrafting(confidence(sampler, logits, draft))
          )
            break;
          if (controlled) draft = controlled.apply(xPos + 1 + drafts.length, draft);
          drafts.push(draft);
          if (drafts.length >= maxDrafts || this.closed) break;
          logits = await spec.extendDraft(draft.token);
        }
      }

      if (this.closed) break;
      const target = await spec.verify(
        x,
        drafts.map((d) => d.token),
      );
      const emitted: number[] = [];
      let accepted = 0;
      for (const draft of drafts) {
        const verdict = judge(sampler, row(target, accepted, spec.vocabSize), draft);
        emitted.push(verdict.token);
        if (!verdict.accepted) break;
        accepted++;
      }
      if (accepted === drafts.length) emitted.push(sampler.pick(row(target, accepted, spec.vocabSize)));
      spec.commit(xPos + 1 + accepted);

      const judged = Math.min(drafts.length, accepted + 1);
      stats.draftTokensProposed += judged;
      stats.draftTokensAccepted += accepted;
      stats.draftTokensDiscarded! += drafts.length - judged;
      stats.verifications++;
      stats.tokens += emitted.length;
      policy.update(drafts.length, accepted);
      sequence.push(...emitted);
      yield emitted;
    }
    return stats;
  }

  /** The speculator with every async call recorded in `inFlight`. */
  private guarded(): Omit<BlockSpeculator, 'release'> {
    const s = this.speculator;
    const track = <T>(p: Promise<T>): Promise<T> => {
      this.inFlight = p.catch(() => {});
      return p;
    };
    return {
      vocabSize: s.vocabSize,
      prefill: (prompt) => track(s.prefill(prompt)),
      beginDraft: (sequence) => track(s.beginDraft(sequence)),
      extendDraft: (token) => track(s.extendDraft(token)),
      verify: (x, drafts) => track(s.verify(x, drafts)),
      commit: (length) => s.commit(length),
    };
  }

  /** Waits for the stage call in progress (a generation in flight stops at its next step), then releases. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.inFlight;
    await this.speculator.release();
  }
}
