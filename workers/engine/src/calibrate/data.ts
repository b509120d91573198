/**
 * Calibration data: the model's own hidden states after every layer, with the final layer's greedy
 * token, over text from a corpus.
 *
 * The corpus is cut into paragraphs (blank-line separated) and split deterministically by position:
 * the first (1 - heldOutFraction) of the paragraphs are for fitting, the rest are held apart for
 * measuring. Two kinds of rows are collected:
 * - teacher-forced: BOS + a paragraph's tokens (up to maxSeqLen) in one block, every position a row;
 * - greedy: BOS + the first `prefixTokens - 1` tokens of a paragraph, then `greedyTokens` tokens that the
 *   model itself picks greedily. Rows from the last prefix position on are kind ROW_GREEDY (scored): these are
 *   the positions whose next token a drafter must guess while decoding (the design note's measure:
 *   greedy continuations of 12-token prefixes).
 * Rows of one sequence are contiguous and in order, so features of earlier tokens (SPD) are rows r - j.
 */
import type { LlamaModel } from '../model/llama';
import type { Tokenizer } from '../tokenizer/tokenizer';
import { HiddenStateModel, headLogits } from './forward';
import { argmaxAt } from './linalg';

export interface HiddenDataset {
  rows: number;
  dim: number;
  nLayers: number;
  /** hidden[l] [rows, dim]: the residual stream after l layers (hidden[0] = embedding, hidden[N] = final). */
  hidden: Float32Array[];
  tokens: Int32Array; // input token of each row
  pos: Int32Array; // position of the row in its sequence (rows of one sequence are contiguous)
  target: Int32Array; // the final layer's argmax at the row (the model's greedy next token)
  /** 0 = teacher-forced row, 1 = greedy-sequence prefix row, 2 = greedy continuation row (scored). */
  kind: Uint8Array;
}

export const ROW_TEACHER = 0;
export const ROW_PREFIX = 1;
export const ROW_GREEDY = 2;

/** 1 for the rows of the given kind(s). */
export function rowMask(data: HiddenDataset, ...kinds: number[]): Uint8Array {
  return Uint8Array.from(data.kind, (k) => (kinds.includes(k) ? 1 : 0));
}

export interface CorpusSplit {
  fit: string[];
  heldOut: string[];
}

/** Paragraphs of the corpus, split by position into fitting and held-out text. */
export function splitCorpus(text: string, heldOutFraction = 0.15): CorpusSplit {
  const paras = text
    .split(/\r?\n\s*\r?\n/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  const cut = Math.max(1, Math.min(paras.length - 1, Math.round(paras.length * (1 - heldOutFraction))));
  return { fit: paras.slice(0, cut), heldOut: paras.slice(cut) };
}

export interface CollectOptions {
  /** Teacher-forced rows to collect at most (whole paragraphs, in order). */
  teacherRows: number;
  /** Greedy continuations to run (one per paragraph, in order) and their lengths. */
  greedySequences: number;
  prefixTokens?: number; // default 12 (BOS included)
  greedyTokens?: number; // default 32
  maxSeqLen?: number;
  onProgress?: (rows: number, totalRows: number) => void;
}

class Growable {
  private parts: ArrayLike<number>[] = [];
  length = 0;
  push(a: ArrayLike<number>): void {
    this.parts.push(a);
    this.length += a.length;
  }
  float32(): Float32Array {
    const out = new Float32Array(this.length);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  int32(): Int32Array {
    const out = new Int32Array(this.length);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** Runs the model over the paragraphs and returns every row's hidden states (see the module comment). */
export function collectHiddenStates(
  model: LlamaModel,
  tokenizer: Tokenizer,
  paragraphs: string[],
  opts: CollectOptions,
): HiddenDataset {
  const c = model.config;
  const maxSeq = Math.min(opts.maxSeqLen ?? c.maxSeqLen, c.maxSeqLen);
  const prefix = opts.prefixTokens ?? 12;
  const greedyN = opts.greedyTokens ?? 32;
  const hidden = Array.from({ length: c.nLayers + 1 }, () => new Growable());
  const tokens = new Growable();
  const pos = new Growable();
  const target = new Growable();
  const kind = new Growable();
  const runner = new HiddenStateModel(model, maxSeq);
  const total = opts.teacherRows + opts.greedySequences * (prefix + greedyN);
  let done = 0;

  const record = (
    toks: number[],
    h: Float32Array[],
    start: number,
    scoreFrom: number,
    greedyRow: boolean,
  ) => {
    const T = toks.length;
    for (let l = 0; l <= c.nLayers; l++) hidden[l].push(h[l]);
    tokens.push(toks);
    pos.push(Int32Array.from({ length: T }, (_, i) => start + i));
    const logits = headLogits(model, h[c.nLayers], T);
    const tg = new Int32Array(T);
    for (let t = 0; t < T; t++) tg[t] = argmaxAt(logits, t * c.vocabSize, c.vocabSize);
    target.push(tg);
    kind.push(
      Uint8Array.from({ length: T }, (_, i) =>
        !greedyRow ? ROW_TEACHER : start + i >= scoreFrom ? ROW_GREEDY : ROW_PREFIX,
      ),
    );
    done += T;
    opts.onProgress?.(Math.min(done, total), total);
    return tg;
  };

  // teacher-forced rows
  let teacher = 0;
  for (const p of paragraphs) {
    if (teacher >= opts.teacherRows) break;
    const ids = tokenizer.encodePrompt(p).slice(0, Math.min(maxSeq, opts.teacherRows - teacher + 1));
    if (ids.length < 2) continue;
    runner.truncate(0);
    const out = runner.forward(ids);
    record(ids, out.hidden, 0, 0, false);
    teacher += ids.length;
  }

  // greedy continuations of paragraph prefixes
  let greedy = 0;
  for (const p of paragraphs) {
    if (greedy >= opts.greedySequences) break;
    const ids = tokenizer.encodePrompt(p).slice(0, prefix);
    if (ids.length < prefix || prefix + greedyN > maxSeq) continue;
    runner.truncate(0);
    const out = runner.forward(ids);
    let next = record(ids, out.hidden, 0, prefix - 1, true)[ids.length - 1];
    for (let i = 0; i < greedyN; i++) {
      const step = runner.forward([next]);
      next = record([next], step.hidden, prefix + i, prefix - 1, true)[0];
    }
    greedy++;
  }

  return {
    rows: tokens.length,
    dim: c.dim,
    nLayers: c.nLayers,
    hidden: hidden.map((h) => h.float32()),
    tokens: tokens.int32(),
    pos: pos.int32(),
    target: target.int32(),
    kind: Uint8Array.from(kind.int32()),
  };
}
