import { describe, expect, it } from 'vitest';
import { StopText } from '../../workers/engine/src/generate/stop-text';

const feed = (stops: string[], deltas: string[]) => {
  const s = new StopText(stops);
  const out = deltas.map((d) => s.push(d));
  return { out, rest: s.flush(), stopped: s.stopped };
};

describe('StopText', () => {
  it('passes text straight through without stop sequences', () => {
    expect(feed([], ['a', 'b'])).toEqual({ out: ['a', 'b'], rest: '', stopped: false });
  });

  it('cuts at a stop sequence split across deltas and drops it', () => {
    const r = feed(['\n\n'], ['Hello.', '\n', '\nMore']);
    expect(r.out.join('')).toBe('Hello.');
    expect(r.stopped).toBe(true);
    expect(r.rest).toBe('');
  });

  it('holds back a possible prefix and releases it when it turns out not to be one', () => {
    const r = feed(['END'], ['abc E', 'N', 'x']);
    expect(r.out).toEqual(['abc ', '', 'ENx']);
    expect(r.stopped).toBe(false);
  });

  it('releases held text at the end', () => {
    const r = feed(['END'], ['abc EN']);
    expect(r.out).toEqual(['abc ']);
    expect(r.rest).toBe('EN');
  });

  it('stops at the earliest of several stop sequences', () => {
    expect(feed(['b', 'cd'], ['xxcdb']).out).toEqual(['xx']);
  });
});
