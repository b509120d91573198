import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  exitHeadFor,
  listExitHeads,
  loadExitHead,
  saveExitHead,
} from '../../workers/engine/src/decode/heads';
import { fillNormal, llamaConfig, randomLlama, uniformRng } from '../../workers/engine/src/model/random';
import { hashFile, loadPackage, readManifest, writePackage } from '../../workers/engine/src/package';

const SHARED = path.resolve(import.meta.dirname, '../../../shared');
let root: string;
let dir: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ppsd-heads-'));
  dir = path.join(root, 'pkg');
  const model = randomLlama(
    llamaConfig({ dim: 16, nLayers: 4, nHeads: 4, vocabSize: 512, maxSeqLen: 64 }),
    3,
  );
  await writePackage(dir, model, path.join(SHARED, 'models/stories260K/tok512.bin'), { synthetic: true });
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('exit heads in a package', () => {
  it('round-trip with a recorded checksum, and the package still verifies', async () => {
    const rand = uniformRng(1);
    const weight = fillNormal(new Float32Array(16 * 16), rand, 1);
    const bias = fillNormal(new Float32Array(16), rand, 1);
    const m = await saveExitHead(
      dir,
      2,
      { weight, bias },
      { kind: 'distilled', acceptance: 0.61234, metrics: { leastSquares: 0.5 } },
    );
    const rec = m.exitHeads?.['2'];
    expect(rec).toMatchObject({ file: 'heads/exit-2.safetensors', kind: 'distilled', acceptance: 0.6123 });
    expect(m.files['heads/exit-2.safetensors']).toEqual(
      await hashFile(path.join(dir, 'heads/exit-2.safetensors')),
    );
    const head = await loadExitHead(dir, 2);
    expect(head?.afterLayer).toBe(2);
    expect(Array.from(head!.affine!.weight)).toEqual(Array.from(weight));
    expect(Array.from(head!.affine!.bias)).toEqual(Array.from(bias));
    const pkg = await loadPackage(dir); // verifies every checksum, the head's included
    expect(listExitHeads(pkg.manifest).map((h) => h.layer)).toEqual([2]);
    // replacing a head drops the old entry's metrics
    await saveExitHead(dir, 2, { weight, bias }, { kind: 'affine-lsq', acceptance: 0.5 });
    const again = await readManifest(dir);
    expect(again.exitHeads?.['2']).toEqual({
      file: 'heads/exit-2.safetensors',
      kind: 'affine-lsq',
      acceptance: 0.5,
    });
    // no head at a layer: undefined, and exitHeadFor falls back to the logit lens
    expect(await loadExitHead(dir, 3)).toBeUndefined();
    expect(await exitHeadFor(dir, again, pkg.model, 3)).toEqual({ afterLayer: 3 });
  });

  it('refuses a corrupt head file, naming it', async () => {
    const rand = uniformRng(2);
    await saveExitHead(
      dir,
      1,
      { weight: fillNormal(new Float32Array(256), rand, 1), bias: new Float32Array(16) },
      { kind: 'affine-lsq', acceptance: 0.4 },
    );
    const file = path.join(dir, 'heads/exit-1.safetensors');
    const bytes = await readFile(file);
    bytes[bytes.length - 3] ^= 0xff;
    await writeFile(file, bytes);
    await expect(loadExitHead(dir, 1)).rejects.toThrow(/heads\/exit-1\.safetensors.*checksum/);
    await expect(loadPackage(dir)).rejects.toThrow(/exit-1\.safetensors/);
  });

  it('rejects heads of the wrong shape or layer', async () => {
    await expect(
      saveExitHead(
        dir,
        4,
        { weight: new Float32Array(256), bias: new Float32Array(16) },
        { kind: 'affine-lsq', acceptance: 0 },
      ),
    ).rejects.toThrow(/exit layer/);
    await expect(
      saveExitHead(
        dir,
        1,
        { weight: new Float32Array(9), bias: new Float32Array(3) },
        { kind: 'affine-lsq', acceptance: 0 },
      ),
    ).rejects.toThrow();
  });
});
