import { mkdir, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import {
  addPackageFile,
  hashFile,
  loadPackage,
  mergePatch,
  PackageError,
  readManifest,
  verifyPackage,
  writePackage,
} from '../../workers/engine/src/package';
import { convertLlama2cTokenizerFile } from '../../workers/engine/src/tokenizer/to-hf';
import { expectSameWeights } from '../helpers/same-weights';
import { LLAMA2_TOKENIZER, STORIES260K, scratchDir, TOK512 } from '../helpers/shared';

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let stories: LlamaModel;
const at = (name: string) => path.join(scratch.dir, name);

beforeAll(async () => {
  scratch = await scratchDir('ppsd-package-');
  stories = await readLlama2c(STORIES260K);
});
afterAll(() => scratch.cleanup());

/** A fresh package of stories260K with the llama2.c tokenizer. */
async function freshPackage(name: string): Promise<string> {
  const dir = at(name);
  await writePackage(dir, stories, TOK512, { name });
  return dir;
}

describe('model packages', () => {
  it('writes manifest, weights and tokenizer, and loads back the same model', async () => {
    const dir = await freshPackage('basic');
    expect((await readdir(dir)).sort()).toEqual(['manifest.json', 'tokenizer.bin', 'weights.safetensors']);
    const manifest = await readManifest(dir);
    expect(manifest).toMatchObject({
      format: 'ppsd-package',
      version: 1,
      name: 'basic',
      architecture: 'llama',
      config: stories.config,
      dtype: 'f32',
      tokenizer: { file: 'tokenizer.bin', kind: 'llama2c' },
      weights: 'weights.safetensors',
    });
    expect(manifest.synthetic).toBeUndefined();
    expect(Object.keys(manifest.files).sort()).toEqual(['tokenizer.bin', 'weights.safetensors']);
    for (const [rel, rec] of Object.entries(manifest.files))
      expect(await hashFile(path.join(dir, rel))).toEqual(rec);

    const pkg = await loadPackage(dir);
    expect(pkg.dir).toBe(dir);
    expectSameWeights(pkg.model, stories);
    expect(pkg.model.weights.classifier).toBe(pkg.model.weights.tokenEmbedding);
    expect(pkg.tokenizer.kind).toBe('llama2c');
    expect(pkg.tokenizer.decode(pkg.tokenizer.encode('Once upon a time'))).toBe('Once upon a time');
  });

  it('carries a Hugging Face tokenizer.json', async () => {
    const json = at('tok512.json');
    await convertLlama2cTokenizerFile(TOK512, json);
    const dir = at('hf-tokenizer');
    await writePackage(dir, stories, json);
    const pkg = await loadPackage(dir);
    expect(pkg.manifest.tokenizer).toEqual({ file: 'tokenizer.json', kind: 'hf', addBos: true });
    expect(pkg.tokenizer.kind).toBe('hf');
    expect([pkg.tokenizer.bosId, pkg.tokenizer.eosId]).toEqual([1, 2]);
    const llama2c = (await loadPackage(at('basic'))).tokenizer;
    expect(pkg.tokenizer.encode('Lily saw a big dog.')).toEqual(llama2c.encode('Lily saw a big dog.'));
  });

  it('refuses to overwrite a non-empty folder or pair a too-large tokenizer with the model', async () => {
    await expect(writePackage(at('basic'), stories, TOK512)).rejects.toThrow(
      /already exists and is not empty/,
    );
    await expect(writePackage(at('big-vocab'), stories, LLAMA2_TOKENIZER)).rejects.toThrow(
      /tokenizer has 32000 tokens but the model's vocabulary is 512/,
    );
    await mkdir(at('empty'));
    await writePackage(at('empty'), stories, TOK512);
    expect((await readManifest(at('empty'))).name).toBe('empty');
  });

  it('refuses a corrupted byte, naming the file and the checksum mismatch', async () => {
    const dir = await freshPackage('corrupt-byte');
    const weights = path.join(dir, 'weights.safetensors');
    const bytes = await readFile(weights);
    bytes[Math.floor(bytes.length / 2)] ^= 0x01;
    await writeFile(weights, bytes);
    const err = await loadPackage(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PackageError);
    expect((err as PackageError).file).toBe('weights.safetensors');
    expect((err as Error).message).toMatch(
      /'weights.safetensors' fails its checksum: expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}/,
    );
    await expect(verifyPackage(dir)).rejects.toThrow(/checksum/);
  });

  it('refuses a truncated or missing file, naming expected and actual sizes', async () => {
    const dir = await freshPackage('truncated');
    const manifest = await readManifest(dir);
    const expected = manifest.files['weights.safetensors'].bytes;
    await truncate(path.join(dir, 'weights.safetensors'), expected - 100);
    await expect(loadPackage(dir)).rejects.toThrow(
      `package file 'weights.safetensors' has the wrong size: expected ${expected} bytes, got ${expected - 100}`,
    );
    // Without verification the truncated weights still fail clearly when read.
    await expect(loadPackage(dir, { verify: false })).rejects.toThrow(/truncated/);
    const other = await freshPackage('missing');
    await rm(path.join(other, 'tokenizer.bin'));
    await expect(verifyPackage(other)).rejects.toThrow(/package file 'tokenizer.bin' is missing/);
  });

  it('refuses a missing, malformed or foreign manifest', async () => {
    const dir = await freshPackage('bad-manifest');
    const manifestPath = path.join(dir, 'manifest.json');
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    await writeFile(manifestPath, '{"format": ');
    await expect(loadPackage(dir)).rejects.toThrow(/manifest.json is not valid JSON/);
    await writeFile(manifestPath, JSON.stringify({ ...manifest, version: 2 }));
    await expect(loadPackage(dir)).rejects.toThrow(/version 2 is not supported/);
    await writeFile(
      manifestPath,
      JSON.stringify({
        ...manifest,
        files: { ...manifest.files, '../escape': manifest.files['tokenizer.bin'] },
      }),
    );
    await expect(loadPackage(dir)).rejects.toThrow(/invalid package file path '..\/escape'/);
    const { 'tokenizer.bin': _dropped, ...withoutTokenizer } = manifest.files;
    await writeFile(manifestPath, JSON.stringify({ ...manifest, files: withoutTokenizer }));
    await expect(loadPackage(dir)).rejects.toThrow(
      /references 'tokenizer.bin' but lists no size and checksum/,
    );
    await rm(manifestPath);
    await expect(loadPackage(dir)).rejects.toThrow(/not a model package \(manifest.json is missing\)/);
  });
});

describe('addPackageFile', () => {
  it('adds checksummed files and merges manifest entries', async () => {
    const dir = await freshPackage('extras');
    const head2 = new Uint8Array([1, 2, 3, 4]);
    await addPackageFile(dir, 'heads/exit-2.safetensors', head2, {
      exitHeads: { '2': { file: 'heads/exit-2.safetensors', kind: 'affine', metrics: { acceptance: 0.5 } } },
    });
    const m = await addPackageFile(dir, 'heads/exit-3.safetensors', 'three', {
      exitHeads: { '3': { file: 'heads/exit-3.safetensors', kind: 'lens' } },
      skipSet: { attention: [1, 2], mlp: [3] },
    });
    expect(Object.keys(m.exitHeads ?? {}).sort()).toEqual(['2', '3']);
    expect(m.exitHeads?.['2'].metrics).toEqual({ acceptance: 0.5 });
    expect(m.skipSet).toEqual({ attention: [1, 2], mlp: [3] });
    expect(m.files['heads/exit-2.safetensors']).toEqual(
      await hashFile(path.join(dir, 'heads/exit-2.safetensors')),
    );
    expect(await readManifest(dir)).toEqual(m);
    await verifyPackage(dir);
    expect((await loadPackage(dir)).manifest.exitHeads?.['3'].kind).toBe('lens');

    // null deletes; replacing a file updates its checksum
    const after = await addPackageFile(dir, 'heads/exit-3.safetensors', 'THREE!', {
      exitHeads: { '2': null },
      skipSet: null,
    });
    expect(Object.keys(after.exitHeads ?? {})).toEqual(['3']);
    expect(after.skipSet).toBeUndefined();
    expect(after.files['heads/exit-3.safetensors'].bytes).toBe(6);
    await verifyPackage(dir);
    expect((await readdir(dir)).filter((f) => f.includes('.tmp'))).toEqual([]);

    // a corrupted added file is caught like any other
    await writeFile(path.join(dir, 'heads/exit-3.safetensors'), 'three!');
    await expect(verifyPackage(dir)).rejects.toThrow(/'heads\/exit-3.safetensors' fails its checksum/);
  });

  it('serializes concurrent additions so none is lost', async () => {
    const dir = await freshPackage('concurrent');
    await Promise.all(
      [1, 2, 3, 4, 5].map((l) =>
        addPackageFile(dir, `heads/${l}.bin`, `head ${l}`, {
          exitHeads: { [l]: { file: `heads/${l}.bin`, kind: 'affine' } },
        }),
      ),
    );
    const m = await verifyPackage(dir);
    expect(Object.keys(m.exitHeads ?? {}).sort()).toEqual(['1', '2', '3', '4', '5']);
  });

  it('rejects paths outside the package and patches that reference unlisted files', async () => {
    const dir = await freshPackage('guarded');
    const before = await readFile(path.join(dir, 'manifest.json'), 'utf8');
    for (const bad of ['../x.bin', '/abs.bin', 'manifest.json', 'a//b', './a', '']) {
      await expect(addPackageFile(dir, bad, 'x'), bad).rejects.toThrow(/invalid package file path/);
    }
    await expect(
      addPackageFile(dir, 'drafter.bin', 'x', { drafters: { spd: { file: 'not-there.bin', kind: 'spd' } } }),
    ).rejects.toThrow(/references 'not-there.bin'/);
    expect(await readFile(path.join(dir, 'manifest.json'), 'utf8')).toBe(before);
  });

  it('merge patch semantics', () => {
    expect(mergePatch({ a: { b: 1, c: 2 }, d: [1] }, { a: { c: null, e: 3 }, d: [2] })).toEqual({
      a: { b: 1, e: 3 },
      d: [2],
    });
  });
});
