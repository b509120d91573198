/** Messages between the API and its token-counting threads. */
export interface CountRequest {
  id: number;
  /** Tokenizer file (llama2.c .bin or tokenizer.json), loaded once per thread. */
  file: string;
  /** The package's tokenizer options (packageTokenizerOptions), so the thread counts as the worker does. */
  options?: TokenizerOptions;
  text: string;
}

export type TokenizerOptions = { bosId?: number; eosId?: number; addBos?: boolean };

export type CountReply = { id: number; tokens: number } | { id: number; error: string };
