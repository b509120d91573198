/** Picks the tokenizer implementation by file: llama2.c `.bin` or Hugging Face `.json`. */
import { readFile } from 'node:fs/promises';
import { type HfTokenizerOptions, loadHfTokenizer } from './hf';
import { Llama2cTokenizer } from './llama2c';
import type { Tokenizer } from './tokenizer';

export { HfTokenizer, loadHfTokenizer } from './hf';
export { Llama2cTokenizer, readLlama2cTokenizer } from './llama2c';
export { convertLlama2cTokenizerFile, llama2cToHfJson } from './to-hf';
export type { StreamDecoder, Tokenizer } from './tokenizer';

export type TokenizerKind = 'llama2c' | 'hf';

export function tokenizerKindOf(file: string): TokenizerKind {
  if (file.endsWith('.bin')) return 'llama2c';
  if (file.endsWith('.json')) return 'hf';
  throw new Error(
    `${file}: unknown tokenizer file type (expected a llama2.c .bin or a Hugging Face tokenizer.json)`,
  );
}

/** Loads a tokenizer; BOS/EOS overrides apply to tokenizer.json (llama2.c's are fixed at 1 and 2). */
export async function loadTokenizer(file: string, options: HfTokenizerOptions = {}): Promise<Tokenizer> {
  if (tokenizerKindOf(file) === 'hf') return loadHfTokenizer(file, options);
  return Llama2cTokenizer.parse(await readFile(file), file);
}
