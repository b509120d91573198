/**
 * `ppsd synth --shape NAME [--seed S] [--tokenizer FILE] [--dtype D] --out DIR`: a model package with random
 * weights of a real model's shape, marked `synthetic: true`. Its text is noise; its compute and memory
 * cost are the real model's, which is what benchmarks at realistic shapes need.
 */
import path from 'node:path';
import { stderrProgress } from '../../formats/progress';
import type { LlamaConfig } from '../../model/llama';
import { randomLlama } from '../../model/random';
import { writePackage } from '../../package';
import { DTYPE_HELP, dtypeFlag, numberFlag, parseCommandArgs, UsageError } from '../args';

type Shape = Pick<
  LlamaConfig,
  'dim' | 'hiddenDim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'vocabSize' | 'maxSeqLen'
>;

const SHARED = path.resolve(import.meta.dirname, '../../../../../../shared');

/** Named shapes with the tokenizer that fits their vocabulary. */
export const SHAPES: Record<string, { shape: Shape; tokenizer: string }> = {
  // Karpathy's stories110M (llama2.c), Llama-2 tokenizer.
  'llama2-110m': {
    shape: {
      dim: 768,
      hiddenDim: 2048,
      nLayers: 12,
      nHeads: 12,
      nKvHeads: 12,
      vocabSize: 32000,
      maxSeqLen: 1024,
    },
    tokenizer: path.join(SHARED, 'models/llama2-tokenizer/tokenizer.bin'),
  },
  'stories260k-shape': {
    shape: { dim: 64, hiddenDim: 172, nLayers: 5, nHeads: 8, nKvHeads: 4, vocabSize: 512, maxSeqLen: 512 },
    tokenizer: path.join(SHARED, 'models/stories260K/tok512.bin'),
  },
};

const FLAGS: Record<keyof Shape, string> = {
  dim: 'dim',
  hiddenDim: 'hidden-dim',
  nLayers: 'layers',
  nHeads: 'heads',
  nKvHeads: 'kv-heads',
  vocabSize: 'vocab',
  maxSeqLen: 'seq-len',
};

const HELP = `usage: ppsd synth --shape <name> --out <dir> [options]

Writes a random-weight model package (manifest marks it synthetic: true) of a real model's shape.

shapes: ${Object.keys(SHAPES).join(', ')}, or custom: give every one of
  --dim --hidden-dim --layers --heads --kv-heads --vocab --seq-len (these also override a named shape)

options:
  --shape NAME       named shape (see above)
  --out DIR          package folder to create (must not exist, or be empty)
  --seed S           random seed (default 0)
  --tokenizer FILE   llama2.c tokenizer.bin or HF tokenizer.json (default: the shape's own; required for
                     custom shapes)
  --name N           package name (default: synth-<shape>-seed<S>)
  --untied           separate classifier weights (default: tied to the token embedding)
  --dtype D          ${DTYPE_HELP}; default f32
  --quiet            no progress output`;

export async function run(argv: string[]): Promise<void> {
  const shapeFlags = Object.fromEntries(Object.values(FLAGS).map((f) => [f, { type: 'string' as const }]));
  const { values } = parseCommandArgs(
    argv,
    {
      shape: { type: 'string' },
      out: { type: 'string' },
      seed: { type: 'string' },
      tokenizer: { type: 'string' },
      name: { type: 'string' },
      untied: { type: 'boolean' },
      dtype: { type: 'string' },
      quiet: { type: 'boolean' },
      ...shapeFlags,
    },
    HELP,
  );
  if (!values.out) throw new UsageError(`--out is required\n\n${HELP}`);
  const named = values.shape === undefined ? undefined : SHAPES[values.shape];
  if (values.shape !== undefined && !named) {
    throw new UsageError(`unknown --shape '${values.shape}' (known: ${Object.keys(SHAPES).join(', ')})`);
  }
  const flagValues = values as Record<string, string | undefined>;
  const shape = {} as Shape;
  for (const [key, flag] of Object.entries(FLAGS) as [keyof Shape, string][]) {
    const value = numberFlag(flagValues[flag], flag, named?.shape[key]);
    if (!Number.isInteger(value) || value <= 0) throw new UsageError(`--${flag} must be a positive integer`);
    shape[key] = value;
  }
  if (shape.dim % shape.nHeads !== 0 || (shape.dim / shape.nHeads) % 2 !== 0) {
    throw new UsageError(
      `--dim ${shape.dim} must be a multiple of --heads ${shape.nHeads} with an even head size`,
    );
  }
  if (shape.nHeads % shape.nKvHeads !== 0) throw new UsageError('--heads must be a multiple of --kv-heads');
  const tokenizer = values.tokenizer ? path.resolve(values.tokenizer) : named?.tokenizer;
  if (!tokenizer) throw new UsageError('--tokenizer is required for a custom shape');
  const seed = numberFlag(values.seed, 'seed', 0);
  const dtype = dtypeFlag(values.dtype, 'f32');

  const config: LlamaConfig = {
    ...shape,
    normEps: 1e-5,
    ropeTheta: 10000,
    tiedEmbeddings: values.untied !== true,
    bosId: 1,
    eosId: 2,
  };
  const quiet = values.quiet === true;
  const shapeName = values.shape ?? 'custom';
  if (!quiet) console.error(`generating random weights (${shapeName}, seed ${seed}, ${dtype})`);
  const model = randomLlama(config, seed, { dtype });
  const writing = quiet ? undefined : stderrProgress('writing weights');
  const out = path.resolve(values.out);
  const manifest = await writePackage(out, model, tokenizer, {
    name: values.name ?? `synth-${shapeName}-seed${seed}`,
    synthetic: true,
    dtype,
    source: `random weights: shape ${shapeName}, seed ${seed}`,
    onProgress: writing,
  });
  writing?.end();
  if (!quiet) console.error(`wrote synthetic package '${manifest.name}' to ${out}`);
}
