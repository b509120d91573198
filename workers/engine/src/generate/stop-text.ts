/**
 * Turns a stream of text deltas into what a client may see, given stop sequences: text is released only
 * once it can no longer be the beginning of a stop sequence, and generation ends at the first stop
 * sequence, which is not included (OpenAI semantics).
 */
export class StopText {
  private held = '';
  private readonly longest: number;
  stopped = false;

  constructor(private readonly stops: string[]) {
    this.longest = stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  /** Adds generated text; returns the part that is now safe to emit. Sets `stopped` at a stop sequence. */
  push(delta: string): string {
    if (this.stopped) return '';
    this.held += delta;
    if (this.stops.length === 0) return this.release(this.held.length);
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.held.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stopped = true;
      const out = this.held.slice(0, cut);
      this.held = '';
      return out;
    }
    return this.release(this.held.length - this.heldBackLength());
  }

  /** End of generation: whatever is still held is real text. */
  flush(): string {
    return this.stopped ? '' : this.release(this.held.length);
  }

  /** Length of the longest suffix of `held` that is a proper prefix of some stop sequence. */
  private heldBackLength(): number {
    const max = Math.min(this.longest - 1, this.held.length);
    for (let n = max; n > 0; n--) {
      const suffix = this.held.slice(this.held.length - n);
      if (this.stops.some((s) => s.startsWith(suffix))) return n;
    }
    return 0;
  }

  private release(n: number): string {
    const out = this.held.slice(0, n);
    this.held = this.held.slice(n);
    return out;
  }
}
