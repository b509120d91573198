/** Writing model packages. */
import { chmod, copyFile, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { modelTensorDtypes, modelToHfTensors } from '../formats/hf-llama';
import type { ProgressFn } from '../formats/progress';
import { writeSafetensors } from '../formats/safetensors';
import type { LlamaModel } from '../model/llama';
import type { MatrixDtype } from '../model/matrix';
import { loadTokenizer, tokenizerKindOf } from '../tokenizer';
import { hashFile } from './checksum';
import { checkTokenizerFits } from './load';
import {
  type ChatTemplate,
  type FileRecord,
  MANIFEST_FILE,
  PACKAGE_FORMAT,
  PACKAGE_VERSION,
  type PackageManifest,
  WEIGHTS_FILE,
} from './manifest';

export interface PackageExtras {
  name?: string; // default: the folder name
  synthetic?: boolean;
  source?: string;
  /** The dtype the package was made in (default f32); each matrix's own is recorded in `tensors`. */
  dtype?: MatrixDtype;
  stagePlan?: Record<string, unknown>;
  /** Whether prompts start with BOS (GGUF `add_bos_token`); default: what the tokenizer files say. */
  addBos?: boolean;
  /** The model's chat template, stored in the manifest. */
  chat?: ChatTemplate;
  /** Bytes of weights written so far / total. */
  onProgress?: ProgressFn;
}

/**
 * Writes a package folder: weights.safetensors (HF tensor names), the tokenizer file (copied as
 * tokenizer.bin or tokenizer.json) and manifest.json. The folder is assembled under a temporary name
 * and renamed into place, so `dir` is either absent or complete. `dir` must not exist or be empty.
 */
export async function writePackage(
  dir: string,
  model: LlamaModel,
  tokenizerSourcePath: string,
  extras: PackageExtras = {},
): Promise<PackageManifest> {
  const kind = tokenizerKindOf(tokenizerSourcePath);
  const tokenizer = await loadTokenizer(tokenizerSourcePath, {
    bosId: model.config.bosId,
    eosId: model.config.eosId,
    addBos: extras.addBos,
  });
  checkTokenizerFits(tokenizer, model, tokenizerSourcePath);
  await ensureEmptyOrAbsent(dir);

  const staging = `${dir.replace(/\/+$/, '')}.tmp-${process.pid}-${Date.now()}`;
  await mkdir(staging, { recursive: true });
  try {
    const files: Record<string, FileRecord> = {};
    files[WEIGHTS_FILE] = await writeSafetensors(path.join(staging, WEIGHTS_FILE), modelToHfTensors(model), {
      metadata: { format: 'pt' },
      onProgress: extras.onProgress,
    });
    const tokenizerFile = kind === 'llama2c' ? 'tokenizer.bin' : 'tokenizer.json';
    await copyFile(tokenizerSourcePath, path.join(staging, tokenizerFile));
    await chmod(path.join(staging, tokenizerFile), 0o644); // the source may be read-only; the package is ours
    files[tokenizerFile] = await hashFile(path.join(staging, tokenizerFile));

    const manifest: PackageManifest = {
      format: PACKAGE_FORMAT,
      version: PACKAGE_VERSION,
      name: extras.name ?? path.basename(path.resolve(dir)),
      architecture: 'llama',
      config: { ...model.config },
      dtype: extras.dtype ?? 'f32',
      tensors: modelTensorDtypes(model),
      tokenizer: { file: tokenizerFile, kind, addBos: tokenizer.addsBos },
      ...(extras.chat ? { chat: extras.chat } : {}),
      weights: WEIGHTS_FILE,
      files,
      createdAt: new Date().toISOString(),
      ...(extras.synthetic ? { synthetic: true } : {}),
      ...(extras.source ? { source: extras.source } : {}),
      ...(extras.stagePlan ? { stagePlan: extras.stagePlan } : {}),
    };
    await writeFile(path.join(staging, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    await rm(dir, { recursive: true, force: true }); // absent or empty, checked above
    await rename(staging, dir);
    return manifest;
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw err;
  }
}

async function ensureEmptyOrAbsent(dir: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new Error(`${dir}: cannot use as package folder (${(err as NodeJS.ErrnoException).code})`);
  }
  if (entries.length > 0) throw new Error(`${dir}: already exists and is not empty; refusing to overwrite`);
}
