/**
 * A batched pipeline stage in its own worker_threads Worker (stage-thread.ts is the engine's handle):
 * one BatchedOrtStage over the stage's layers, sessions created here from graph bytes, and per sequence
 * its KV cache of these layers. Each `step` runs one batched forward. Messages are handled one after
 * another, so a `close` waits for the step before it: the thread is never torn down inside run().
 */
import { performance } from 'node:perf_hooks';
import { parentPort } from 'node:worker_threads';
import { transferList } from '../decode/stage-protocol';
import { headDim } from '../model/llama';
import type { StageOutput } from '../model/stage';
import { BatchedOrtStage } from '../runtime/batched-stage';
import { KvCache } from '../runtime/kv-cache';
import type {
  FromStageThread,
  StageThreadInit,
  StageThreadStep,
  ToStageThread,
} from './stage-thread-protocol';

if (!parentPort) throw new Error('stage-thread-worker.ts must run inside a worker_threads Worker');
const port = parentPort;

let stage: BatchedOrtStage | undefined;
let init: StageThreadInit | undefined;
const caches = new Map<number, KvCache>();
/** Graph bytes by lane count, until the session of that bucket has been made from them. */
const graphs = new Map<number, Uint8Array>();
let queue: Promise<void> = Promise.resolve();

const send = (msg: FromStageThread, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer);
const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err));

async function start(msg: StageThreadInit): Promise<void> {
  init = msg;
  stage = new BatchedOrtStage(
    {
      config: msg.config,
      consistentRows: msg.consistentRows,
      graph: (lanes) => {
        const bytes = graphs.get(lanes);
        if (!bytes) throw new Error(`no graph for ${lanes} lanes`);
        graphs.delete(lanes); // the session keeps its own copy
        return bytes;
      },
    },
    msg.spec,
    msg.maxLanes,
    msg.opts,
  );
  await stage.warm();
  send({ type: 'ready', device: msg.opts.device ?? 'cpu' });
}

async function step(msg: StageThreadStep): Promise<void> {
  if (!stage) throw new Error('stage thread: step before init');
  const items = msg.items.map((it) => {
    const cache = caches.get(it.seq);
    if (!cache) throw new Error(`stage thread: sequence ${it.seq} is not open`);
    if (it.truncate !== undefined && it.truncate < cache.length) cache.truncate(it.truncate);
    return { cache, input: { tokens: it.tokens, hidden: it.hidden, logitRows: it.logitRows } };
  });
  const t0 = performance.now();
  const outs = await stage.run(items);
  // each output is cut from the batch's buffers: copy it out, so only its own bytes travel
  const own: StageOutput[] = outs.map((o) => ({
    rows: o.rows,
    hidden: o.hidden?.slice(),
    logits: o.logits?.slice(),
    exitLogits: o.exitLogits?.slice(),
    exitHidden: o.exitHidden?.slice(),
  }));
  const busyMs = performance.now() - t0;
  send(
    { type: 'out', id: msg.id, outs: own, busyMs },
    transferList(...own.flatMap((o) => [o.hidden, o.logits, o.exitLogits, o.exitHidden])),
  );
}

async function handle(msg: ToStageThread): Promise<void> {
  switch (msg.type) {
    case 'graph':
      graphs.set(msg.lanes, msg.bytes);
      return;
    case 'init':
      return start(msg).catch((err) => send({ type: 'error', message: messageOf(err) }));
    case 'open': {
      const c = init!.config;
      const L = init!.spec.endLayer - init!.spec.firstLayer;
      caches.set(msg.seq, new KvCache(msg.rows, L, c.nKvHeads, headDim(c)));
      return;
    }
    case 'step':
      return step(msg).catch((err) => send({ type: 'error', id: msg.id, message: messageOf(err) }));
    case 'release':
      caches.delete(msg.seq);
      return;
    case 'close': {
      const s = stage;
      stage = undefined;
      caches.clear();
      await s?.release().catch(() => {});
      send({ type: 'closed' });
      port.close();
      return;
    }
  }
}

// A message that fails outside a step (an `open` whose cache cannot be allocated) must not stop the
// queue: later steps then fail on their own ("not open") and the thread lives on.
port.on('message', (msg: ToStageThread) => {
  queue = queue
    .then(() => handle(msg))
    .catch((err) => send({ type: 'error', message: `stage thread: ${msg.type}: ${messageOf(err)}` }));
});
