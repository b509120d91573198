/**
 * Opens the engine (`Engine` from @ppsd/engine), runs the warm-up generation and finds which decoders
 * this package can run (the default one must work; the others are probed with a one-token generation).
 */
import { DECODER_NAMES, type DecoderName } from '@ppsd/contract';
import { Engine } from '@ppsd/engine';
import type { WorkerEngine } from './engine-types';

export interface OpenedEngine {
  engine: WorkerEngine;
  decoders: DecoderName[];
}

export interface EngineOpenOptions {
  decoder: DecoderName;
  devices: string[];
  maxSeqLen?: number;
  /** The caller verified every checksum moments ago (fresh S3 pull): skip the engine's own pass. */
  verified?: boolean;
  log: (msg: string) => void;
}

type EngineOptions = NonNullable<Parameters<typeof Engine.open>[1]>;

export async function openEngine(dir: string, opts: EngineOpenOptions): Promise<Engine> {
  return Engine.open(dir, {
    decoder: opts.decoder,
    devices: opts.devices as EngineOptions['devices'],
    ...(opts.maxSeqLen ? { maxSeqLen: opts.maxSeqLen } : {}),
    verified: opts.verified === true,
    allowCpuFallback: true,
    log: opts.log,
  });
}

const WARMUP_PROMPT = 'Once upon a time';

/** One-token generation with `decoder`; throws when it fails or yields nothing. */
export async function warmUp(engine: WorkerEngine, decoder: DecoderName): Promise<number> {
  const t0 = performance.now();
  const res = await engine.generate(WARMUP_PROMPT, {
    maxTokens: 1,
    temperature: 0,
    topP: 1,
    seed: 0,
    stop: [],
    decoder,
  });
  if (res.completionTokens < 1 && res.finishReason !== 'stop')
    throw new Error(`warm-up with ${decoder} produced no token`);
  return performance.now() - t0;
}

/** Warm-up with the default decoder (must succeed), then probe the other decoders. */
export async function warmUpAndProbe(
  engine: WorkerEngine,
  defaultDecoder: DecoderName,
  log: (m: string) => void,
): Promise<DecoderName[]> {
  const ms = await warmUp(engine, defaultDecoder);
  log(`warm-up generation with ${defaultDecoder} ok (${ms.toFixed(0)} ms)`);
  const decoders: DecoderName[] = [defaultDecoder];
  for (const d of DECODER_NAMES) {
    if (d === defaultDecoder) continue;
    try {
      await warmUp(engine, d);
      decoders.push(d);
    } catch (err) {
      log(`decoder ${d} not available: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  return decoders;
}
