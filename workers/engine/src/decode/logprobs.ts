/**
 * Log-probabilities of verified tokens, for OpenAI's `logprobs`. They are always of the verifying (full)
 * model's raw distribution: log_softmax of its logits row at the token's position, before temperature,
 * top-p, logit_bias or penalties. So they do not depend on the sampling settings, and they are the same
 * under every decoder (each verifies with the full model; drafts never contribute).
 *
 * This file holds no inference code: the contract re-exports its types (`@ppsd/engine/logprobs`).
 */

/** A token id and its log-probability (engine side, before the tokenizer renders it). */
export interface IdLogprob {
  id: number;
  logprob: number;
}

/** One verified token: its own log-probability and the `n` most probable tokens at its position. */
export interface IdLogprobs extends IdLogprob {
  top: IdLogprob[];
}

/** A token as the API reports it: its text (see `tokenString`), UTF-8 bytes and log-probability. */
export interface TopLogprob {
  token: string;
  bytes: number[];
  logprob: number;
}

/** One completion token's entry: itself, where its text starts, and the most probable alternatives. */
export interface TokenLogprob extends TopLogprob {
  /** Character (UTF-16 unit) offset of the token's text in the completion text. */
  offset: number;
  top: TopLogprob[];
}

/** Most alternatives a request may ask for (OpenAI's chat limit). */
export const MAX_TOP_LOGPROBS = 20;

/** log_softmax(logits)[token] and the `n` largest entries (ties: the lower id first), in float64. */
export function logprobsOf(logits: ArrayLike<number>, token: number, n: number): IdLogprobs {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const logZ = max + Math.log(sum);
  return {
    id: token,
    logprob: logits[token] - logZ,
    top: topIds(logits, n).map((id) => ({ id, logprob: logits[id] - logZ })),
  };
}

/** Ids of the `n` largest values, largest first; an insertion into a short sorted list per candidate. */
function topIds(row: ArrayLike<number>, n: number): number[] {
  const top: number[] = [];
  if (n <= 0) return top;
  for (let i = 0; i < row.length; i++) {
    if (top.length === n && row[i] <= row[top[n - 1]]) continue;
    let at = top.length < n ? top.length : n - 1;
    while (at > 0 && row[top[at - 1]] < row[i]) at--;
    top.splice(at, 0, i);
    if (top.length > n) top.pop();
  }
  return top;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A token's text for the API: its bytes as UTF-8, or, when they are not whole UTF-8 characters (a byte
 * token inside a multi-byte character), OpenAI's `bytes:\xNN..` spelling; `bytes` carries them exactly.
 */
export function tokenString(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return `bytes:${Array.from(bytes, (b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`;
  }
}
