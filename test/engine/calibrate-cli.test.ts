import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { run as calibrate } from '../../workers/engine/src/cli/commands/calibrate';
import { loadExitHead } from '../../workers/engine/src/decode/heads';
import { loadSpdDrafter } from '../../workers/engine/src/decode/spd-drafter';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import { loadPackage, writePackage } from '../../workers/engine/src/package';

const SHARED = path.resolve(import.meta.dirname, '../../../shared');
let root: string;
let dir: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ppsd-calib-'));
  dir = path.join(root, 's260k');
  const model = await readLlama2c(path.join(SHARED, 'models/stories260K/stories260K.bin'));
  await writePackage(dir, model, path.join(SHARED, 'models/stories260K/tok512.bin'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Runs the command with stdout captured and stderr (progress) silenced. */
async function capture(argv: string[]): Promise<string> {
  const lines: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => {
    lines.push(a.join(' '));
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    await calibrate(argv);
  } finally {
    log.mockRestore();
    err.mockRestore();
  }
  return lines.join('\n');
}

const tiny = ['--fit-rows', '800', '--greedy', '6', '--held-out', '4', '--held-rows', '200', '--epochs', '1'];

describe('ppsd calibrate (tiny slice of the corpus)', () => {
  it('prints the acceptance table and stores the chosen head; the SPD drafter too', async () => {
    const table = await capture([dir, '--exit-layer', '3', ...tiny]);
    expect(table).toContain('| exit after layer | logit lens | least squares |');
    expect(table).toMatch(/\| 3 \(chosen\) \| 0\.\d{3} \| 0\.\d{3} \| 0\.\d{3} \|/);
    const pkg = await loadPackage(dir); // verifies the new file's checksum
    const rec = pkg.manifest.exitHeads?.['3'] as unknown as {
      kind: string;
      acceptance: number;
      metrics: { logitLens: number };
    };
    expect(['affine-lsq', 'distilled']).toContain(rec.kind);
    expect(rec.acceptance).toBeGreaterThan(rec.metrics.logitLens);
    expect((await loadExitHead(dir, 3, pkg.manifest))?.affine?.weight.length).toBe(64 * 64);
    expect(pkg.manifest.exitHeads?.['2']).toBeUndefined();

    const spd = await capture([dir, '--drafter', 'spd', '--stages', '2', ...tiny]);
    expect(spd).toContain('SPD drafter, least squares');
    const after = await loadPackage(dir);
    const d = after.manifest.drafters?.spd as unknown as {
      file: string;
      depths: number[];
      stages: number;
      exitLayer: number;
    };
    expect(d).toMatchObject({ depths: [3, 5], stages: 2, exitLayer: 3 });
    const w = await loadSpdDrafter(path.join(dir, d.file));
    expect(w.depths).toEqual([3, 5]);
  }, 240_000);

  it('rejects a bad exit layer before any work', async () => {
    await expect(capture([dir, '--exit-layer', '5'])).rejects.toThrow(/exit-layer/);
  });
});
