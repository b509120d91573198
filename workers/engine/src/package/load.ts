/** Reading and verifying model packages. */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { modelFromHfTensors, modelTensorDtypes } from '../formats/hf-llama';
import type { ProgressFn } from '../formats/progress';
import { readStoredTensors } from '../formats/safetensors';
import type { LlamaModel } from '../model/llama';
import { loadTokenizer } from '../tokenizer';
import type { Tokenizer } from '../tokenizer/tokenizer';
import { hashFile } from './checksum';
import { MANIFEST_FILE, PackageError, type PackageManifest, parseManifest } from './manifest';

export interface LoadedPackage {
  dir: string;
  manifest: PackageManifest;
  model: LlamaModel;
  tokenizer: Tokenizer;
}

export async function readManifest(dir: string): Promise<PackageManifest> {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PackageError(
      code === 'ENOENT'
        ? `${dir}: not a model package (manifest.json is missing)`
        : `${file}: cannot read (${code})`,
      MANIFEST_FILE,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PackageError(
      `${dir}: manifest.json is not valid JSON (${(err as Error).message})`,
      MANIFEST_FILE,
    );
  }
  return parseManifest(json, dir);
}

/**
 * Checks that every file the manifest lists exists with its recorded size and sha256. Throws a
 * PackageError naming the first bad file and what is wrong; returns the manifest when all is well.
 */
export async function verifyPackage(
  dir: string,
  options: { onProgress?: ProgressFn } = {},
): Promise<PackageManifest> {
  const manifest = await readManifest(dir);
  const entries = Object.entries(manifest.files);
  const total = entries.reduce((sum, [, r]) => sum + r.bytes, 0);
  let done = 0;
  // Sizes first: a missing or truncated file is reported without hashing gigabytes.
  for (const [rel, expected] of entries) {
    let actual: number;
    try {
      actual = (await stat(path.join(dir, rel))).size;
    } catch {
      throw new PackageError(`${dir}: package file '${rel}' is missing`, rel);
    }
    if (actual !== expected.bytes) {
      throw new PackageError(
        `${dir}: package file '${rel}' has the wrong size: expected ${expected.bytes} bytes, got ${actual}`,
        rel,
      );
    }
  }
  for (const [rel, expected] of entries) {
    const actual = await hashFile(path.join(dir, rel));
    if (actual.sha256 !== expected.sha256) {
      throw new PackageError(
        `${dir}: package file '${rel}' fails its checksum: expected sha256 ${expected.sha256}, got ${actual.sha256} (corrupt)`,
        rel,
      );
    }
    done += expected.bytes;
    options.onProgress?.(done, total);
  }
  return manifest;
}

/** Loads a package: verifies it (unless told it was just verified), then reads weights and tokenizer. */
export async function loadPackage(
  dir: string,
  options: { verify?: boolean; onProgress?: ProgressFn } = {},
): Promise<LoadedPackage> {
  const manifest = options.verify === false ? await readManifest(dir) : await verifyPackage(dir);
  const weightsPath = path.join(dir, manifest.weights);
  const { tensors } = await readStoredTensors(weightsPath, { onProgress: options.onProgress });
  const model = modelFromHfTensors({ ...manifest.config }, tensors, weightsPath);
  checkTensorDtypes(manifest, model, dir);
  const tokenizer = await loadTokenizer(
    path.join(dir, manifest.tokenizer.file),
    packageTokenizerOptions(manifest),
  );
  checkTokenizerFits(tokenizer, model, dir);
  return { dir, manifest, model, tokenizer };
}

/** How a package's tokenizer is loaded, by the engine and by the API that counts prompt tokens. */
export function packageTokenizerOptions(m: Pick<PackageManifest, 'config' | 'tokenizer'>) {
  // packages written before `addBos` was recorded always started prompts with BOS
  return { bosId: m.config.bosId, eosId: m.config.eosId, addBos: m.tokenizer.addBos ?? true };
}

export function checkTokenizerFits(tokenizer: Tokenizer, model: LlamaModel, where: string): void {
  if (tokenizer.vocabSize > model.config.vocabSize) {
    throw new Error(
      `${where}: the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary is ${model.config.vocabSize}`,
    );
  }
}

/** The weights file must hold each matrix in the dtype the manifest lists for it. */
function checkTensorDtypes(manifest: PackageManifest, model: LlamaModel, dir: string): void {
  if (!manifest.tensors) return;
  const actual = modelTensorDtypes(model);
  for (const [name, want] of Object.entries(manifest.tensors)) {
    const got = actual[name];
    if (
      !got ||
      got.dtype !== want.dtype ||
      (want.blockSize !== undefined && got.blockSize !== want.blockSize)
    ) {
      throw new PackageError(
        `${dir}: manifest lists '${name}' as ${JSON.stringify(want)} but ${manifest.weights} holds ${JSON.stringify(got ?? 'nothing')}`,
        manifest.weights,
      );
    }
  }
}
