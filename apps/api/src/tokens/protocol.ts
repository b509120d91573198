/** Messages between the API and its token-counting threads. */
export interface CountRequest {
  id: number;
  /** Tokenizer file (llama2.c .bin or tokenizer.json), loaded once per thread. */
  file: string;
  text: string;
}

export type CountReply = { id: number; tokens: number } | { id: number; error: string };
