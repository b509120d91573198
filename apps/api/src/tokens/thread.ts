/**
 * The token-counting thread: loads tokenizer files on first use and answers `count` requests, so a long
 * prompt's tokenization runs beside the API's event loop instead of on it.
 */
import { parentPort } from 'node:worker_threads';
import { loadTokenizer, type Tokenizer } from '@ppsd/engine/tokenizer';
import type { CountReply, CountRequest } from './protocol';

const tokenizers = new Map<string, Promise<Tokenizer>>();

async function count(req: CountRequest): Promise<CountReply> {
  try {
    let tokenizer = tokenizers.get(req.file);
    if (!tokenizer) {
      tokenizer = loadTokenizer(req.file);
      tokenizers.set(req.file, tokenizer);
      tokenizer.catch(() => tokenizers.delete(req.file));
    }
    return { id: req.id, tokens: (await tokenizer).encode(req.text).length };
  } catch (err) {
    return { id: req.id, error: (err as Error).message };
  }
}

parentPort?.on('message', (req: CountRequest) => {
  void count(req).then((reply) => parentPort?.postMessage(reply));
});
