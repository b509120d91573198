/**
 * Host <-> device transfer accounting: the bytes each stage graph design moves per run, by tensor,
 * computed from the shapes alone (no GPU needed).
 *
 * Designs (see graph/llama-graph.ts):
 *   'host'    the runtime owns the cache: past_k/v.<j> go in ([P+1, kvH, hd] per layer), only new_k/new_v
 *             ([T, L, kvH, hd]) come out. On CPU nothing crosses a bus. On CUDA onnxruntime-node has no
 *             IOBinding: every input is copied host->device and every output device->host on every run,
 *             so the past (O(P)) crosses once per token, the new rows once.
 *   'device'  the graph returns the whole present K/V and takes it back as the next past. With WebGPU and
 *             preferredOutputLocation 'gpu-buffer' those tensors never leave the GPU; on CUDA (every output
 *             to host, every input back) the whole cache would cross twice per token, so CUDA uses 'host'.
 */
import { headDim, type LlamaConfig } from '../model/llama';
import type { StageSpec } from '../model/stage';
import type { Device } from './device';

export type Provider = 'cpu' | 'cuda' | 'webgpu';
export type CacheDesign = 'host' | 'device';

export interface TransferItem {
  tensor: string;
  dir: 'in' | 'out';
  /** Bytes of the tensor per run. */
  bytes: number;
  /** Whether those bytes cross the host<->device bus with this provider. */
  crosses: boolean;
}

export interface TransferShape {
  /** New rows per run (1 for an AR token; the block length for a PPSD/EESD verify). */
  T: number;
  /** Cached positions before the run. */
  P: number;
  /** Logit rows (default T). */
  R?: number;
}

export const providerOf = (d: Device): Provider => (d.startsWith('cuda') ? 'cuda' : (d as Provider));

/** The tensors one run of the stage moves, and which of them cross the bus for `provider`. */
export function stageTransfers(
  config: LlamaConfig,
  spec: StageSpec,
  design: CacheDesign,
  provider: Provider,
  { T, P, R = T }: TransferShape,
): TransferItem[] {
  const L = spec.endLayer - spec.firstLayer;
  const kv = config.nKvHeads * headDim(config) * 4; // bytes per position and layer
  const first = spec.firstLayer === 0;
  const last = spec.endLayer === config.nLayers;
  const bus = provider !== 'cpu';
  const items: TransferItem[] = [];
  const add = (tensor: string, dir: 'in' | 'out', bytes: number, crosses = bus) =>
    items.push({ tensor, dir, bytes, crosses });

  if (first) add('tokens', 'in', T * 8);
  else add('hidden_in', 'in', T * config.dim * 4);
  add('positions', 'in', T * 8);
  if (last || spec.exit) add('logit_rows', 'in', 8);
  if (design === 'host') {
    add(`past_k.<0..${L - 1}>`, 'in', L * (P + 1) * kv);
    add(`past_v.<0..${L - 1}>`, 'in', L * (P + 1) * kv);
  } else {
    add('past_len', 'in', 8);
    // fed back from the previous run's outputs: resident on WebGPU, re-uploaded on CUDA
    add(`past_k.<0..${L - 1}>`, 'in', L * P * kv, provider === 'cuda');
    add(`past_v.<0..${L - 1}>`, 'in', L * P * kv, provider === 'cuda');
  }
  if (last) add('logits', 'out', R * config.vocabSize * 4);
  else add('hidden', 'out', T * config.dim * 4);
  if (spec.exit) {
    add('exit_logits', 'out', R * config.vocabSize * 4);
    add('exit_hidden', 'out', T * config.dim * 4);
  }
  if (design === 'host') {
    add('new_k', 'out', T * L * kv);
    add('new_v', 'out', T * L * kv);
  } else {
    add(`present_k.<0..${L - 1}>`, 'out', L * (P + T) * kv, provider === 'cuda');
    add(`present_v.<0..${L - 1}>`, 'out', L * (P + T) * kv, provider === 'cuda');
  }
  return items;
}

/** Bytes that cross the bus per run, split by direction. */
export function busBytes(items: TransferItem[]): { toDevice: number; toHost: number; total: number } {
  let toDevice = 0;
  let toHost = 0;
  for (const i of items) {
    if (!i.crosses) continue;
    if (i.dir === 'in') toDevice += i.bytes;
    else toHost += i.bytes;
  }
  return { toDevice, toHost, total: toDevice + toHost };
}

/** The design a provider should use: only WebGPU can keep outputs on the device. */
export const cacheDesignFor = (provider: Provider): CacheDesign =>
  provider === 'webgpu' ? 'device' : 'host';

const fmt = (b: number) =>
  b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(2)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`;

/** A markdown table of per-run bus bytes: one row per case, the crossing tensors listed by direction. */
export function transferTable(rows: { label: string; items: TransferItem[] }[]): string {
  const out = [
    '| case | to device, by tensor | to host, by tensor | total/run |',
    '| --- | --- | --- | ---: |',
  ];
  const list = (items: TransferItem[], dir: 'in' | 'out') =>
    items
      .filter((i) => i.crosses && i.dir === dir)
      .map((i) => `\`${i.tensor}\` ${fmt(i.bytes)}`)
      .join(', ') || '-';
  for (const { label, items } of rows) {
    out.push(
      `| ${label} | ${list(items, 'in')} | ${list(items, 'out')} | **${fmt(busBytes(items).total)}** |`,
    );
  }
  return out.join('\n');
}
