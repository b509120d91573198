import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { END, START } from '../../workers/engine/src/bench/docs';
import { run as bench } from '../../workers/engine/src/cli/commands/bench';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import { writePackage } from '../../workers/engine/src/package';

const SHARED = path.resolve(import.meta.dirname, '../../../shared');
let root: string;
let dir: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ppsd-bench-'));
  dir = path.join(root, 's260k');
  const model = await readLlama2c(path.join(SHARED, 'models/stories260K/stories260K.bin'));
  await writePackage(dir, model, path.join(SHARED, 'models/stories260K/tok512.bin'));
  await writeFile(path.join(root, 'prompts.txt'), '# a comment\nOnce upon a time, there was a cat.\n');
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function quiet<T>(f: () => Promise<T>): Promise<{ out: string; value: T }> {
  const lines: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => {
    lines.push(a.join(' '));
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    const value = await f();
    return { out: lines.join('\n'), value };
  } finally {
    log.mockRestore();
    err.mockRestore();
  }
}

describe('ppsd bench (tiny run on stories260K)', () => {
  it('runs AR baselines and a pipeline decoder, writes JSON, and renders the docs section', async () => {
    const json = path.join(root, 'out.json');
    const { out } = await quiet(() =>
      bench([
        dir,
        '--prompts',
        path.join(root, 'prompts.txt'),
        '--decoders',
        'ar,ppsd',
        '--max-tokens',
        '8',
        '--repeats',
        '1',
        '--json',
        json,
      ]),
    );
    expect(out).toContain('| ar-1core |');
    expect(out).toContain('| ar-all-cores |');
    expect(out).toMatch(/\| ppsd \| [\d.]+ \| 0\.\d{3} \|/); // lossless (no NOT LOSSLESS tag), acceptance measured
    const saved = JSON.parse(await readFile(json, 'utf8'));
    expect(saved.meta.acceptanceMode).toBe('real');
    expect(saved.records.filter((r: { label: string }) => r.label === 'ppsd')[0].matchesAr).toBe(true);
    // the stage probe ran on PPSD's Workers and its ceiling reached the summary
    expect(saved.probes.ppsd.aloneMs).toHaveLength(2);
    expect(saved.probes.ppsd.togetherMs.every((t: number) => t > 0)).toBe(true);
    const ppsdRow = saved.summaries.find((s: { label: string }) => s.label === 'ppsd');
    expect(ppsdRow.ceiling.efficiency).toBeGreaterThan(0);

    const docs = path.join(root, 'BENCHMARKS.md');
    await writeFile(docs, '# Benchmarks\n\n<!-- other:start -->\nmine\n<!-- other:end -->\n');
    await quiet(() => bench(['--report', json, '--docs', docs, '--chart', path.join(root, 'img/chart.svg')]));
    const text = await readFile(docs, 'utf8');
    expect(text).toContain('<!-- other:start -->\nmine\n<!-- other:end -->');
    expect(text).toContain(START);
    expect(text).toContain(END);
    expect(text).toContain('![speedup against alpha](img/chart.svg)');
    expect(text).toContain('Machine ceiling (stage probe)');
    expect(await readFile(path.join(root, 'img/chart.svg'), 'utf8')).toContain('<svg');
  }, 180_000);
});
