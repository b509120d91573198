/** `ppsd import` and `ppsd synth` end to end, run as the real CLI in a child process. */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeHfFolder } from '../../workers/engine/src/formats/hf';
import { readLlama2c } from '../../workers/engine/src/formats/llama2c';
import type { LlamaModel } from '../../workers/engine/src/model/llama';
import { randomLlama } from '../../workers/engine/src/model/random';
import { loadPackage } from '../../workers/engine/src/package';
import { expectSameWeights } from '../helpers/same-weights';
import { runPpsd, STORIES260K, scratchDir, TOK512 } from '../helpers/shared';

const ppsd = runPpsd;

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let stories: LlamaModel;
const at = (name: string) => path.join(scratch.dir, name);

beforeAll(async () => {
  scratch = await scratchDir('ppsd-cli-');
  stories = await readLlama2c(STORIES260K);
});
afterAll(() => scratch.cleanup());

describe('ppsd import', () => {
  it('imports a llama2.c checkpoint, finding tok512.bin next to it, with progress on stderr', async () => {
    const out = at('stories');
    const res = await ppsd('import', '--from', STORIES260K, '--out', out);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/reading +\d+% /);
    expect(res.stderr).toMatch(/writing weights 100% /);
    expect(res.stderr).toMatch(/wrote package 'stories260K'/);
    const pkg = await loadPackage(out);
    expect(pkg.manifest.tokenizer.kind).toBe('llama2c');
    expect(pkg.manifest.source).toBe(STORIES260K);
    expectSameWeights(pkg.model, stories);
  });

  it('imports a Hugging Face folder with its own tokenizer.json', async () => {
    const hf = at('hf-folder');
    await writeHfFolder(stories, TOK512, hf);
    const out = at('from-hf');
    const res = await ppsd('import', '--from', hf, '--out', out, '--name', 'stories-hf', '--quiet');
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toBe('');
    const pkg = await loadPackage(out);
    expect(pkg.manifest.name).toBe('stories-hf');
    expect(pkg.manifest.tokenizer).toEqual({ file: 'tokenizer.json', kind: 'hf', addBos: true });
    expectSameWeights(pkg.model, stories);
    expect(pkg.tokenizer.encode('The cat sat.')).toEqual(
      (await loadPackage(at('stories'))).tokenizer.encode('The cat sat.'),
    );
  });

  it('takes an explicit --tokenizer', async () => {
    const out = at('explicit');
    const res = await ppsd(
      'import',
      '--from',
      STORIES260K,
      '--tokenizer',
      path.join(at('hf-folder'), 'tokenizer.json'),
      '--out',
      out,
    );
    expect(res.code, res.stderr).toBe(0);
    expect((await loadPackage(out)).tokenizer.kind).toBe('hf');
  });

  it('reports usage errors with exit code 2 and other failures with exit code 1', async () => {
    const noOut = await ppsd('import', '--from', STORIES260K);
    expect(noOut.code).toBe(2);
    expect(noOut.stderr).toMatch(/--out is required/);
    const missing = await ppsd('import', '--from', at('nope.bin'), '--out', at('nope'));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/no such file or folder/);
    const exists = await ppsd('import', '--from', STORIES260K, '--out', at('stories'));
    expect(exists.code).toBe(1);
    expect(exists.stderr).toMatch(/already exists and is not empty/);
  });
});

describe('ppsd synth', () => {
  it('writes a random-weight package of a named shape, labelled synthetic', async () => {
    const out = at('synth-260k');
    const res = await ppsd('synth', '--shape', 'stories260k-shape', '--seed', '7', '--out', out);
    expect(res.code, res.stderr).toBe(0);
    const manifest = JSON.parse(await readFile(path.join(out, 'manifest.json'), 'utf8'));
    expect(manifest.synthetic).toBe(true);
    expect(manifest.name).toBe('synth-stories260k-shape-seed7');
    const pkg = await loadPackage(out);
    expect(pkg.model.config).toEqual({ ...stories.config });
    expectSameWeights(pkg.model, randomLlama(pkg.model.config, 7));
    expect(pkg.tokenizer.vocabSize).toBe(512);
  });

  it('takes a custom shape from flags', async () => {
    const out = at('synth-custom');
    const res = await ppsd(
      'synth',
      ...['--dim', '32', '--hidden-dim', '96', '--layers', '3', '--heads', '4', '--kv-heads', '2'],
      ...['--vocab', '512', '--seq-len', '128', '--tokenizer', TOK512, '--out', out, '--untied', '--quiet'],
    );
    expect(res.code, res.stderr).toBe(0);
    const pkg = await loadPackage(out);
    expect(pkg.model.config).toMatchObject({
      dim: 32,
      hiddenDim: 96,
      nLayers: 3,
      nHeads: 4,
      nKvHeads: 2,
      vocabSize: 512,
    });
    expect(pkg.model.config.tiedEmbeddings).toBe(false);
    expect(pkg.manifest.synthetic).toBe(true);
  });

  it('rejects unknown shapes and incomplete custom shapes', async () => {
    const unknown = await ppsd('synth', '--shape', 'gpt-5', '--out', at('x'));
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown --shape 'gpt-5'/);
    const partial = await ppsd('synth', '--dim', '32', '--tokenizer', TOK512, '--out', at('y'));
    expect(partial.code).toBe(2);
    expect(partial.stderr).toMatch(/--hidden-dim is required/);
  });
});
