/** Runs an ORT stage inside a worker_threads Worker (used by runtime-worker.test.ts). */
import { parentPort } from 'node:worker_threads';
import { createOrtStageFromGraph, type StageGraphInfo } from '../../workers/engine/src/runtime';

const port = parentPort!;
port.once('message', async (msg: { graph: Uint8Array; info: StageGraphInfo; tokens: number[] }) => {
  try {
    const stage = await createOrtStageFromGraph(msg.graph, msg.info, { threads: 1 });
    const logits: Float32Array[] = [];
    const first = await stage.forward({ tokens: Int32Array.from(msg.tokens.slice(0, 3)), logitRows: 1 });
    logits.push(first.logits!);
    for (const t of msg.tokens.slice(3))
      logits.push((await stage.forward({ tokens: Int32Array.of(t) })).logits!);
    await stage.release();
    port.postMessage(
      { logits },
      logits.map((l) => l.buffer as ArrayBuffer),
    );
  } catch (err) {
    port.postMessage({ error: String(err) });
  }
});
