/**
 * Token events mark which text came from accepted draft tokens: a decoder step is one verification (its
 * accepted drafts first, then the verifier's token), and runGeneration attributes released text to the
 * tokens it came from, through held-back UTF-8 and stop-sequence prefixes.
 */
import { describe, expect, it } from 'vitest';
import { type DecodeRequest, type Decoder, startStats } from '../../workers/engine/src/decode/decoder';
import { runGeneration, type TokenEvent } from '../../workers/engine/src/generate/generate';
import { loadTokenizer } from '../../workers/engine/src/tokenizer';
import { TOK512 } from '../helpers/shared';

/** A scripted decoder: each step yields `ids`, of which the first `accepted` were accepted drafts. */
function scripted(steps: { ids: number[]; accepted: number }[]): Decoder {
  return {
    name: 'eesd',
    async *decode(request: DecodeRequest) {
      const stats = startStats(request, 'eesd');
      for (const s of steps) {
        stats.draftTokensProposed += s.accepted + 1;
        stats.draftTokensAccepted += s.accepted;
        stats.verifications++;
        stats.tokens += s.ids.length;
        yield s.ids;
      }
      return stats;
    },
    close: async () => {},
  };
}

describe('token segments', () => {
  it('mark accepted drafts per token; texts concatenate to the event text', async () => {
    const tok = await loadTokenizer(TOK512);
    const words = tok.encode(' Once upon a time there was a little girl').slice(1); // no BOS
    expect(words.length).toBeGreaterThanOrEqual(8);
    const prompt = Int32Array.from([tok.bosId]);
    const steps = [
      { ids: words.slice(0, 3), accepted: 2 },
      { ids: words.slice(3, 4), accepted: 0 },
      { ids: words.slice(4, 8), accepted: 3 },
    ];
    const events: TokenEvent[] = [];
    const r = await runGeneration(scripted(steps), tok, prompt, { maxTokens: 8 }, (e) => {
      events.push(e);
    });
    for (const e of events) expect(e.segments.map((s) => s.text).join('')).toBe(e.text);
    const segs = events.flatMap((e) => e.segments);
    expect(segs.map((s) => s.text).join('')).toBe(r.text);
    // one segment per token here (no text held back): draft, draft, verified, verified, draft x3, verified
    expect(segs.map((s) => s.draft)).toEqual([true, true, false, false, true, true, true, false]);
    expect(r.text).toBe('Once upon a time there was a little');
  });

  it('text held back as a stop-sequence prefix keeps its marks; the stop itself is cut', async () => {
    const tok = await loadTokenizer(TOK512);
    const ids = tok.encode(' Once upon a time there was').slice(1);
    const prompt = Int32Array.from([tok.bosId]);
    // every step [accepted draft, verifier's token]
    const pairs: { ids: number[]; accepted: number }[] = [];
    for (let i = 0; i + 1 < ids.length; i += 2) pairs.push({ ids: [ids[i], ids[i + 1]], accepted: 1 });
    const events: TokenEvent[] = [];
    const r = await runGeneration(scripted(pairs), tok, prompt, { maxTokens: 32, stop: [' there'] }, (e) => {
      events.push(e);
    });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe('Once upon a time');
    const segs = events.flatMap((e) => e.segments);
    expect(segs.map((s) => s.text).join('')).toBe(r.text);
    for (const e of events) expect(e.segments.map((s) => s.text).join('')).toBe(e.text);
    // 'Once' (draft) ' upon' (verified) ' a' (draft) ' time' (verified); ' there' was held back, then cut
    expect(segs.map((s) => [s.text, s.draft])).toEqual([
      ['Once', true],
      [' upon', false],
      [' a', true],
      [' time', false],
    ]);
  });
});
