/**
 * `npm start -- --model <path>`: the import step (infra/local/seed.ts). A Hugging Face folder is imported
 * once through `ppsd import` into a package named after it and keyed by the hash of its content and the
 * served context; a second start reuses it, a changed file imports anew, and a package folder is used as
 * it is.
 */
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModelPackage, modelNameOf } from '../../infra/local/seed';
import { readManifest } from '../../workers/engine/src/package';
import { writeQwen2Folder } from '../helpers/hf-families';
import { scratchDir } from '../helpers/shared';

let root: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  root = await scratchDir('ppsd-local-model-');
});
afterAll(() => root.cleanup());

describe('--model import', () => {
  it('imports a HF folder once, cached by content, and uses a package folder as it is', async () => {
    const src = path.join(root.dir, 'Qwen2.5-tiny-Instruct');
    await writeQwen2Folder(src);
    const packages = path.join(root.dir, 'packages');
    const first = await ensureModelPackage(src, packages, { maxSeqLen: 128 });
    expect(first.name).toBe('Qwen2.5-tiny-Instruct');
    expect(path.basename(first.dir)).toMatch(/^Qwen2\.5-tiny-Instruct-[0-9a-f]{12}$/);
    const manifest = await readManifest(first.dir);
    expect(manifest.config.maxSeqLen).toBe(128); // the served context, below max_position_embeddings 256
    expect(manifest.chat?.template).toContain('<|im_start|>');
    expect(manifest.tokenizer.addBos).toBe(false);

    const written = (await stat(path.join(first.dir, 'manifest.json'))).mtimeMs;
    const again = await ensureModelPackage(src, packages, { maxSeqLen: 128 });
    expect(again).toEqual(first);
    expect((await stat(path.join(first.dir, 'manifest.json'))).mtimeMs).toBe(written);

    const wider = await ensureModelPackage(src, packages, { maxSeqLen: 256 });
    expect(wider.dir).not.toBe(first.dir);
    await writeFile(path.join(src, 'generation_config.json'), '{"eos_token_id": 7}');
    expect((await ensureModelPackage(src, packages, { maxSeqLen: 128 })).dir).not.toBe(first.dir);

    expect(await ensureModelPackage(first.dir, packages, { maxSeqLen: 128 })).toEqual({
      dir: first.dir,
      name: 'Qwen2.5-tiny-Instruct',
    });
    expect(modelNameOf('/x/Llama 3.2 1B.Q4_0.gguf')).toBe('Llama-3.2-1B.Q4_0');
    await expect(
      ensureModelPackage(path.join(root.dir, 'nothing'), packages, { maxSeqLen: 8 }),
    ).rejects.toThrow(/no such file or folder/);
  }, 120_000);
});
