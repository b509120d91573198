/**
 * The cheap draft head's vocabulary: the V' most frequent token ids of a corpus (ties and unseen ids by
 * id), so PPSD's exit head scores V' classifier rows instead of the whole vocabulary. Lossless whatever
 * the subset (q is zero outside it and a drafted token always has q > 0); a good subset only keeps the
 * acceptance close to the full head's.
 *
 * Source: the package's tokenizer applied to the shared corpus (../shared/corpus/tinystories-val.txt,
 * 0.6 MB, about a second for a 32000-token vocabulary); without the corpus the head keeps the whole vocabulary.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { LoadedPackage } from '../package';
import type { Tokenizer } from '../tokenizer/tokenizer';

/** Default V': 4096 rows for vocabularies of 16k tokens or more; the whole vocabulary for small ones. */
export const defaultDraftRows = (vocabSize: number): number => (vocabSize >= 16384 ? 4096 : vocabSize);

export const DEFAULT_VOCAB_CORPUS = path.resolve(
  import.meta.dirname,
  '../../../../../shared/corpus/tinystories-val.txt',
);

/** Token ids ranked by frequency in `ids` (most frequent first; ties and unseen ids by id), the first `size`, ascending. */
export function frequencyRankedVocab(ids: Iterable<number>, size: number, vocabSize: number): Int32Array {
  if (!Number.isInteger(size) || size < 1 || size > vocabSize)
    throw new RangeError(`draft vocabulary size must be in [1, ${vocabSize}], got ${size}`);
  const counts = new Float64Array(vocabSize);
  for (const t of ids) if (t >= 0 && t < vocabSize) counts[t]++;
  const order = Array.from({ length: vocabSize }, (_, i) => i).sort((a, b) => counts[b] - counts[a] || a - b);
  return Int32Array.from(order.slice(0, size)).sort();
}

/** The subset from a corpus text, tokenized paragraph by paragraph. */
export function corpusVocab(tokenizer: Tokenizer, text: string, size: number, vocabSize: number): Int32Array {
  const ids: number[] = [];
  for (const para of text.split(/\n\s*\n/)) {
    const t = para.trim();
    if (t) for (const id of tokenizer.encode(t)) ids.push(id);
  }
  return frequencyRankedVocab(ids, size, vocabSize);
}

/**
 * The draft vocabulary for a package: undefined when `size` covers the vocabulary (no subset), else the
 * `size` most frequent ids of the corpus.
 */
export async function draftVocabFor(
  pkg: Pick<LoadedPackage, 'model' | 'tokenizer'>,
  size = defaultDraftRows(pkg.model.config.vocabSize),
  corpus = DEFAULT_VOCAB_CORPUS,
): Promise<{ vocab?: Int32Array; source: string }> {
  const V = pkg.model.config.vocabSize;
  if (size >= V) return { source: 'full vocabulary' };
  try {
    const text = await readFile(corpus, 'utf8');
    return {
      vocab: corpusVocab(pkg.tokenizer, text, size, V),
      source: `top ${size} by frequency in ${path.basename(corpus)}`,
    };
  } catch {
    // no corpus to rank by: keep the full head rather than guess a subset that would cost acceptance
    return { source: `full vocabulary (no corpus at ${corpus} to rank a subset by)` };
  }
}
