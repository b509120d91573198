/**
 * One pipeline stage in its own worker_threads Worker: it owns the stage's ORT session (created here
 * from graph bytes, so session creation never blocks the controller), its layers' KV cache and its
 * intra-op threads. Messages are handled strictly one after another, so a `close` queued behind a `run`
 * waits for that run to finish: the Worker is never torn down inside `run()`.
 */
import { performance } from 'node:perf_hooks';
import { parentPort } from 'node:worker_threads';
import { createOrtStageFromGraph, type OrtStage } from '../runtime';
import { type FromWorker, type ToWorker, transferList } from './stage-protocol';

if (!parentPort) throw new Error('stage-worker.ts must run inside a worker_threads Worker');
const port = parentPort;

let stage: OrtStage | undefined;
let queue: Promise<void> = Promise.resolve();

const send = (msg: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer);
const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err));

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.type) {
    case 'init': {
      try {
        stage = await createOrtStageFromGraph(msg.graph, msg.info, msg.opts);
        send({ type: 'ready', device: stage.device });
      } catch (err) {
        send({ type: 'error', message: messageOf(err) });
      }
      return;
    }
    case 'run': {
      try {
        if (!stage) throw new Error('stage worker: run before init');
        if (msg.truncate !== undefined) stage.truncate(msg.truncate);
        if (stage.length !== msg.position) {
          throw new Error(
            `stage [${stage.spec.firstLayer}, ${stage.spec.endLayer}) holds ${stage.length} positions, the controller expected ${msg.position}`,
          );
        }
        const t0 = performance.now();
        const out = await stage.forward({ tokens: msg.tokens, hidden: msg.hidden, logitRows: msg.logitRows });
        const busyMs = performance.now() - t0;
        const { hidden, logits, exitLogits, exitHidden } = out;
        send(
          { type: 'out', id: msg.id, hidden, logits, exitLogits, exitHidden, busyMs },
          transferList(hidden, logits, exitLogits, exitHidden),
        );
      } catch (err) {
        send({ type: 'error', id: msg.id, message: messageOf(err) });
      }
      return;
    }
    case 'truncate': {
      if (stage && msg.length < stage.length) stage.truncate(msg.length);
      return;
    }
    case 'close': {
      const s = stage;
      stage = undefined;
      await s?.release().catch(() => {});
      send({ type: 'closed' });
      port.close(); // nothing else keeps the thread alive: it exits by itself
      return;
    }
  }
}

port.on('message', (msg: ToWorker) => {
  queue = queue.then(() => handle(msg));
});
