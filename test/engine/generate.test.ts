import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, PromptTooLongError } from '../../workers/engine/src/engine';
import { EXPECTED_GREEDY_200, repoRoot, STORIES260K, scratchDir, TOK512 } from '../helpers/shared';

const run = promisify(execFile);
const ppsd = (...args: string[]) =>
  run(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'workers/engine/src/cli/main.ts'), ...args], {
    cwd: repoRoot,
    maxBuffer: 16 << 20,
  });

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let pkg: string;
let engine: Engine;

beforeAll(async () => {
  scratch = await scratchDir();
  pkg = path.join(scratch.dir, 'stories260K');
  await ppsd('import', '--from', STORIES260K, '--tokenizer', TOK512, '--out', pkg);
  engine = await Engine.open(pkg);
});

afterAll(async () => {
  await engine?.close();
  await scratch?.cleanup();
});

describe('ppsd generate on stories260K', () => {
  it('prints exactly the llama2.c reference text for 200 greedy steps from BOS', async () => {
    const { stdout } = await ppsd('generate', pkg, '--max-tokens', '200', '--temperature', '0');
    expect(stdout).toBe(await readFile(EXPECTED_GREEDY_200, 'utf8'));
  });

  it('--json reports text, tokens and counts', async () => {
    const { stdout } = await ppsd(
      'generate',
      pkg,
      '--prompt',
      'Once upon a time',
      '--max-tokens',
      '12',
      '--json',
    );
    const out = JSON.parse(stdout);
    expect(out.completion_tokens).toBe(12);
    expect(out.tokens).toHaveLength(12);
    expect(out.prompt_tokens).toBe(engine.countPromptTokens('Once upon a time'));
    const direct = await engine.generate('Once upon a time', { maxTokens: 12 });
    expect(out.text).toBe(direct.text);
    expect(out.tokens).toEqual(direct.tokens);
    expect(out.finish_reason).toBe('length');
    expect(out.timings.tokens_per_second).toBeGreaterThan(0);
  });

  it('rejects bad flags with a usage error', async () => {
    await expect(ppsd('generate', pkg, '--max-tokens', 'many')).rejects.toMatchObject({ code: 2 });
    await expect(ppsd('generate', pkg, '--decoder', 'nope')).rejects.toMatchObject({ code: 2 });
  });
});

describe('Engine.generate', () => {
  it('streams deltas that add up to the text, with consecutive token indexes', async () => {
    const events: { index: number; ids: number[]; text: string }[] = [];
    const result = await engine.generate('The dog', { maxTokens: 40, temperature: 0.9, seed: 3 }, (e) => {
      events.push(e);
    });
    expect(events.map((e) => e.text).join('')).toBe(result.text);
    expect(events.flatMap((e) => e.ids)).toEqual(result.tokens);
    let next = 0;
    for (const e of events) {
      expect(e.index).toBe(next);
      next += e.ids.length;
    }
  });

  it('same seed gives the same text; another seed another text', async () => {
    const params = { maxTokens: 60, temperature: 1, topP: 0.95 };
    const a = await engine.generate('Lily', { ...params, seed: 11 });
    const b = await engine.generate('Lily', { ...params, seed: 11 });
    const c = await engine.generate('Lily', { ...params, seed: 12 });
    expect(b.tokens).toEqual(a.tokens);
    expect(c.tokens).not.toEqual(a.tokens);
  });

  it('ends at a stop sequence, which is not included', async () => {
    const full = await engine.generate('', { maxTokens: 200 });
    const stop = 'park';
    const at = full.text.indexOf(stop);
    expect(at).toBeGreaterThan(0);
    const cut = await engine.generate('', { maxTokens: 200, stop: [stop] });
    expect(cut.text).toBe(full.text.slice(0, at));
    expect(cut.finishReason).toBe('stop');
  });

  it('an AbortSignal cancels within one step and the engine stays usable', async () => {
    const abort = new AbortController();
    const result = await engine.generate('', { maxTokens: 200, signal: abort.signal }, (e) => {
      if (e.index >= 5) abort.abort();
    });
    expect(result.finishReason).toBe('cancelled');
    expect(result.completionTokens).toBeLessThanOrEqual(7);
    const again = await engine.generate('', { maxTokens: 200 });
    expect(again.text).toBe(await readFile(EXPECTED_GREEDY_200, 'utf8'));
  });

  it('refuses a prompt that does not fit the context', () => {
    expect(() => engine.generate('word '.repeat(600), { maxTokens: 10 })).toThrow(PromptTooLongError);
    expect(() => engine.generate('', { maxTokens: 0 })).toThrow(RangeError);
  });
});
