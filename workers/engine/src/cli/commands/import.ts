/**
 * `ppsd import --from <llama2.c .bin | HF folder> [--tokenizer FILE] --out DIR [--name N]`: converts a
 * checkpoint into a model package (manifest.json + weights.safetensors + tokenizer, all checksummed).
 */
import { access, stat } from 'node:fs/promises';
import path from 'node:path';
import { readHfFolder } from '../../formats/hf';
import { readLlama2c } from '../../formats/llama2c';
import { stderrProgress } from '../../formats/progress';
import type { LlamaModel } from '../../model/llama';
import { writePackage } from '../../package';
import { parseCommandArgs, UsageError } from '../args';

const HELP = `usage: ppsd import --from <checkpoint> --out <dir> [options]

Imports a llama2.c checkpoint (.bin, legacy or version 1) or a Hugging Face Llama folder
(config.json + *.safetensors + tokenizer.json) into a model package.

options:
  --from PATH        llama2.c .bin file or Hugging Face folder
  --out DIR          package folder to create (must not exist, or be empty)
  --tokenizer FILE   llama2.c tokenizer.bin or HF tokenizer.json (default: the HF folder's tokenizer.json;
                     for a .bin checkpoint, tokenizer.bin or tok<vocab>.bin next to it)
  --name N           package name (default: the checkpoint's name)
  --quiet            no progress output`;

export async function run(argv: string[]): Promise<void> {
  const { values } = parseCommandArgs(
    argv,
    {
      from: { type: 'string' },
      out: { type: 'string' },
      tokenizer: { type: 'string' },
      name: { type: 'string' },
      quiet: { type: 'boolean' },
    },
    HELP,
  );
  if (!values.from) throw new UsageError(`--from is required\n\n${HELP}`);
  if (!values.out) throw new UsageError(`--out is required\n\n${HELP}`);
  const from = path.resolve(values.from);
  const out = path.resolve(values.out);
  const quiet = values.quiet === true;
  const source = await statOrNull(from);
  if (!source) throw new UsageError(`--from ${values.from}: no such file or folder`);

  const started = Date.now();
  const reading = quiet ? undefined : stderrProgress('reading');
  let model: LlamaModel;
  let tokenizer = values.tokenizer ? path.resolve(values.tokenizer) : undefined;
  if (source.isDirectory()) {
    const folder = await readHfFolder(from, { onProgress: reading });
    model = folder.model;
    tokenizer ??= folder.tokenizerJsonPath;
    if (!tokenizer) throw new UsageError(`${from} has no tokenizer.json; pass --tokenizer`);
  } else {
    model = await readLlama2c(from, { onProgress: reading });
    tokenizer ??= await tokenizerNextTo(from, model.config.vocabSize);
    if (!tokenizer) {
      throw new UsageError(
        `no tokenizer.bin or tok${model.config.vocabSize}.bin next to ${from}; pass --tokenizer`,
      );
    }
  }
  reading?.end();
  const c = model.config;
  if (!quiet) {
    console.error(
      `model: dim ${c.dim}, hidden ${c.hiddenDim}, ${c.nLayers} layers, ${c.nHeads} heads (${c.nKvHeads} kv), ` +
        `vocab ${c.vocabSize}, context ${c.maxSeqLen}, ${c.tiedEmbeddings ? 'tied' : 'untied'} classifier`,
    );
  }

  const writing = quiet ? undefined : stderrProgress('writing weights');
  const manifest = await writePackage(out, model, tokenizer, {
    name: values.name ?? path.basename(from).replace(/\.bin$/, ''),
    source: from,
    onProgress: writing,
  });
  writing?.end();
  if (!quiet) {
    const bytes = Object.values(manifest.files).reduce((sum, f) => sum + f.bytes, 0);
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    console.error(`wrote package '${manifest.name}' to ${out} (${(bytes / 1e6).toFixed(1)} MB, ${secs} s)`);
  }
}

async function statOrNull(p: string) {
  try {
    return await stat(p);
  } catch {
    return null;
  }
}

async function tokenizerNextTo(checkpoint: string, vocabSize: number): Promise<string | undefined> {
  for (const name of ['tokenizer.bin', `tok${vocabSize}.bin`]) {
    const candidate = path.join(path.dirname(checkpoint), name);
    try {
      await access(candidate);
      return candidate;
    } catch {}
  }
  return undefined;
}
