/**
 * Early-exit heads stored in a model package.
 *
 * File: `heads/exit-<E>.safetensors` with tensors `weight` [dim, dim] (row-major, y = W h + b) and `bias`
 * [dim]. Manifest: `exitHeads: { "<E>": { file, kind: 'affine-lsq' | 'distilled', acceptance, metrics } }`
 * where `acceptance` is the greedy agreement with the final layer measured on held-out text, and the
 * file's size and sha256 are recorded in `files` like every package file. Loading re-checks the
 * checksum and the shapes, so a corrupt or mismatched head is refused with a message naming the file.
 */
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../formats/safetensors';
import type { ExitHead, LlamaModel } from '../model/llama';
import { addPackageFile, hashBytes, type PackageManifest, readManifest } from '../package';
import { PackageError } from '../package/manifest';

export type ExitHeadKind = 'affine-lsq' | 'distilled';

export interface ExitHeadRecord {
  file: string;
  kind: ExitHeadKind;
  /** Greedy agreement with the final layer on held-out text (0..1). */
  acceptance: number;
  metrics?: Record<string, unknown>;
  [extra: string]: unknown;
}

export const exitHeadPath = (layer: number): string => `heads/exit-${layer}.safetensors`;

/** The safetensors bytes of an affine head. */
export async function exitHeadBytes(
  affine: { weight: Float32Array; bias: Float32Array },
  meta: Record<string, string> = {},
): Promise<Uint8Array> {
  const dim = affine.bias.length;
  if (affine.weight.length !== dim * dim)
    throw new Error(`exit head: weight has ${affine.weight.length} values, expected [${dim}, ${dim}]`);
  const tmp = path.join(
    tmpdir(),
    `ppsd-head-${process.pid}-${Math.random().toString(36).slice(2)}.safetensors`,
  );
  try {
    await writeSafetensors(
      tmp,
      [
        ['weight', { shape: [dim, dim], data: affine.weight }],
        ['bias', { shape: [dim], data: affine.bias }],
      ],
      { metadata: { format: 'ppsd-exit-head', ...meta } },
    );
    return new Uint8Array(await readFile(tmp));
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Stores (or replaces) the head after `layer` layers in the package; returns the new manifest. */
export async function saveExitHead(
  dir: string,
  layer: number,
  affine: { weight: Float32Array; bias: Float32Array },
  info: { kind: ExitHeadKind; acceptance: number; metrics?: Record<string, unknown> },
): Promise<PackageManifest> {
  const manifest = await readManifest(dir);
  const { dim, nLayers } = manifest.config;
  if (!Number.isInteger(layer) || layer < 1 || layer >= nLayers) {
    throw new RangeError(`exit layer must be in [1, ${nLayers - 1}], got ${layer}`);
  }
  if (affine.bias.length !== dim)
    throw new Error(`exit head: bias has ${affine.bias.length} values, the model's dim is ${dim}`);
  const file = exitHeadPath(layer);
  const bytes = await exitHeadBytes(affine, { layer: String(layer), kind: info.kind });
  const record: ExitHeadRecord = { file, kind: info.kind, acceptance: round4(info.acceptance) };
  if (info.metrics) record.metrics = info.metrics;
  // replace the whole entry (a merge patch would keep stale metrics of an older head)
  await addPackageFile(dir, file, bytes, { exitHeads: { [String(layer)]: null } });
  return addPackageFile(dir, file, bytes, { exitHeads: { [String(layer)]: record } });
}

/** Exit layers that have a stored head, ascending, with their records. */
export function listExitHeads(manifest: PackageManifest): { layer: number; record: ExitHeadRecord }[] {
  return Object.entries(manifest.exitHeads ?? {})
    .map(([k, v]) => ({ layer: Number(k), record: v as ExitHeadRecord }))
    .filter((e) => Number.isInteger(e.layer))
    .sort((a, b) => a.layer - b.layer);
}

/**
 * Loads the stored head after `layer` layers, verifying the file against the manifest's checksum and
 * the model's shape. Returns undefined when the package has no head at that layer.
 */
export async function loadExitHead(
  dir: string,
  layer: number,
  manifest?: PackageManifest,
): Promise<ExitHead | undefined> {
  const m = manifest ?? (await readManifest(dir));
  const record = m.exitHeads?.[String(layer)] as ExitHeadRecord | undefined;
  if (!record) return undefined;
  const rel = record.file;
  const expected = m.files[rel];
  if (!expected) throw new PackageError(`${dir}: exit head '${rel}' has no checksum in the manifest`, rel);
  let bytes: Buffer;
  try {
    bytes = await readFile(path.join(dir, rel));
  } catch {
    throw new PackageError(`${dir}: exit head '${rel}' is missing`, rel);
  }
  const actual = hashBytes(bytes);
  if (actual.sha256 !== expected.sha256 || actual.bytes !== expected.bytes) {
    throw new PackageError(
      `${dir}: exit head '${rel}' fails its checksum: expected sha256 ${expected.sha256} (${expected.bytes} bytes), got ${actual.sha256} (${actual.bytes} bytes) (corrupt)`,
      rel,
    );
  }
  const { tensors } = await readSafetensors(path.join(dir, rel));
  const dim = m.config.dim;
  const weight = tensors.get('weight');
  const bias = tensors.get('bias');
  if (!weight || !bias || weight.data.length !== dim * dim || bias.data.length !== dim) {
    throw new PackageError(
      `${dir}: exit head '${rel}' must hold weight [${dim}, ${dim}] and bias [${dim}]`,
      rel,
    );
  }
  for (const t of [weight.data, bias.data]) {
    for (let i = 0; i < t.length; i++) {
      if (!Number.isFinite(t[i]))
        throw new PackageError(`${dir}: exit head '${rel}' holds non-finite values`, rel);
    }
  }
  return { afterLayer: layer, affine: { weight: weight.data, bias: bias.data } };
}

/**
 * The exit head a k-stage pipeline over `model` should use: the stored head at E when there is one,
 * else the plain logit lens at E.
 */
export async function exitHeadFor(
  dir: string,
  manifest: PackageManifest,
  model: LlamaModel,
  exitLayer: number,
): Promise<ExitHead> {
  if (exitLayer < 1 || exitLayer >= model.config.nLayers)
    throw new RangeError(`no exit after layer ${exitLayer}`);
  return (await loadExitHead(dir, exitLayer, manifest)) ?? { afterLayer: exitLayer };
}

const round4 = (x: number) => Math.round(x * 1e4) / 1e4;
