/**
 * The token-counting thread: loads tokenizer files on first use and answers `count` requests (the ids
 * the engine feeds, BOS included where the tokenizer adds one), so a long prompt's tokenization runs
 * beside the API's event loop instead of on it.
 */
import { parentPort } from 'node:worker_threads';
import { loadTokenizer, type Tokenizer } from '@ppsd/engine/tokenizer';
import type { CountReply, CountRequest } from './protocol';

const tokenizers = new Map<string, Promise<Tokenizer>>();

async function count(req: CountRequest): Promise<CountReply> {
  try {
    const key = `${req.file}\0${JSON.stringify(req.options ?? {})}`;
    let tokenizer = tokenizers.get(key);
    if (!tokenizer) {
      tokenizer = loadTokenizer(req.file, req.options ?? {});
      tokenizers.set(key, tokenizer);
      tokenizer.catch(() => tokenizers.delete(key));
    }
    return { id: req.id, tokens: (await tokenizer).encodePrompt(req.text).length };
  } catch (err) {
    return { id: req.id, error: (err as Error).message };
  }
}

parentPort?.on('message', (req: CountRequest) => {
  void count(req).then((reply) => parentPort?.postMessage(reply));
});
