/**
 * `ppsd import --from <llama2.c .bin | HF folder | .gguf> [--tokenizer FILE] --out DIR [--name N] [--dtype D]
 * [--max-seq-len N]`: converts a checkpoint into a model package (manifest.json + weights.safetensors +
 * tokenizer, all checksummed; the chat template, when the model has one, in the manifest).
 */
import { access, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { readGgufLlama } from '../../formats/gguf-llama';
import { readHfFolder } from '../../formats/hf';
import { readLlama2c } from '../../formats/llama2c';
import { stderrProgress } from '../../formats/progress';
import { isSlowPath, unrunnableReason } from '../../graph/weights';
import { convertModel, type LlamaModel, modelMatrices } from '../../model/llama';
import type { MatrixDtype } from '../../model/matrix';
import { type ChatTemplate, writePackage } from '../../package';
import { DTYPE_HELP, dtypeFlag, numberFlag, parseCommandArgs, UsageError } from '../args';

const HELP = `usage: ppsd import --from <checkpoint> --out <dir> [options]

Imports a llama2.c checkpoint (.bin, legacy or version 1), a Hugging Face folder of a Llama, Mistral or
Qwen2 model (config.json + *.safetensors + tokenizer.json, with generation_config.json and
tokenizer_config.json when present) or a GGUF file of those (v2/v3; its tokenizer, chat template and
config come from its metadata) into a model package.

options:
  --from PATH        llama2.c .bin file, Hugging Face folder or .gguf file
  --out DIR          package folder to create (must not exist, or be empty)
  --tokenizer FILE   llama2.c tokenizer.bin or HF tokenizer.json (default: the HF folder's tokenizer.json;
                     for a .bin checkpoint, tokenizer.bin or tok<vocab>.bin next to it)
  --name N           package name (default: the checkpoint's name)
  --dtype D          ${DTYPE_HELP}; default f32, or for GGUF the tensors' own
                     (F32/F16/BF16/Q8_0/Q4_0 kept exactly, Q4_K/Q5_K/Q6_K converted exactly)
  --max-seq-len N    serve at most N positions (default: the model's max_position_embeddings); sizes the
                     engine's KV cache and rotary tables
  --quiet            no progress output`;

export async function run(argv: string[]): Promise<void> {
  const { values } = parseCommandArgs(
    argv,
    {
      from: { type: 'string' },
      out: { type: 'string' },
      tokenizer: { type: 'string' },
      name: { type: 'string' },
      dtype: { type: 'string' },
      'max-seq-len': { type: 'string' },
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

  const maxSeqLen =
    values['max-seq-len'] === undefined ? undefined : numberFlag(values['max-seq-len'], 'max-seq-len');
  if (maxSeqLen !== undefined && !(Number.isInteger(maxSeqLen) && maxSeqLen >= 1))
    throw new UsageError(`--max-seq-len must be a positive integer, got ${values['max-seq-len']}`);
  const started = Date.now();
  const reading = quiet ? undefined : stderrProgress('reading');
  let model: LlamaModel;
  let tokenizer = values.tokenizer ? path.resolve(values.tokenizer) : undefined;
  let storedDtype: MatrixDtype = 'f32';
  let scratch: string | undefined; // a folder for the tokenizer a GGUF carries in its metadata
  let chat: ChatTemplate | undefined;
  let addBos: boolean | undefined; // GGUF says; tokenizer files say for themselves
  if (from.endsWith('.gguf')) {
    const gguf = await readGgufLlama(from, { onProgress: reading });
    model = gguf.model;
    chat = gguf.chat;
    addBos = gguf.addBos;
    storedDtype = packageDtypeOf(gguf.tensorDtypes);
    if (!tokenizer) {
      scratch = await mkdtemp(path.join(os.tmpdir(), 'ppsd-gguf-'));
      tokenizer = path.join(scratch, gguf.tokenizer.kind === 'llama2c' ? 'tokenizer.bin' : 'tokenizer.json');
      await writeFile(
        tokenizer,
        gguf.tokenizer.kind === 'llama2c' ? gguf.tokenizer.bytes : gguf.tokenizer.json,
      );
    }
  } else if (source.isDirectory()) {
    const folder = await readHfFolder(from, { onProgress: reading, maxSeqLen });
    model = folder.model;
    chat = folder.chat;
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
  if (maxSeqLen !== undefined && maxSeqLen < model.config.maxSeqLen)
    model = { ...model, config: { ...model.config, maxSeqLen } };
  const dtype = dtypeFlag(values.dtype, storedDtype);
  const c = model.config;
  if (!quiet) {
    console.error(
      `model: dim ${c.dim}, hidden ${c.hiddenDim}, ${c.nLayers} layers, ${c.nHeads} heads (${c.nKvHeads} kv), ` +
        `vocab ${c.vocabSize}, context ${c.maxSeqLen}, ${c.tiedEmbeddings ? 'tied' : 'untied'} classifier` +
        `${c.family ? `, ${c.family}` : ''}${c.ropeScaling ? `, rope scaling ${c.ropeScaling.type}` : ''}` +
        `${chat ? ', chat template' : ''}`,
    );
  }

  if (dtype !== storedDtype) {
    const converting = quiet ? undefined : stderrProgress(`converting to ${dtype} (f32 bytes)`);
    model = convertModel(model, dtype, converting && ((done, total) => converting(4 * done, 4 * total)));
    converting?.end();
  }
  checkRunnable(model, quiet);
  const writing = quiet ? undefined : stderrProgress('writing weights');
  const manifest = await writePackage(out, model, tokenizer, {
    dtype,
    name: values.name ?? path.basename(from).replace(/\.(bin|gguf)$/, ''),
    source: from,
    chat,
    addBos,
    onProgress: writing,
  }).finally(() => scratch && rm(scratch, { recursive: true, force: true }));
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

/** A package's headline dtype: the one most of its matrix values are stored in. */
function packageDtypeOf(dtypes: Record<string, MatrixDtype>): MatrixDtype {
  const count = new Map<MatrixDtype, number>();
  for (const d of Object.values(dtypes)) count.set(d, (count.get(d) ?? 0) + 1);
  return [...count.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'f32';
}

/** Refuses matrices the runtime cannot run (naming them), and says which run on its slow path. */
function checkRunnable(model: LlamaModel, quiet: boolean): void {
  const all = modelMatrices(model.weights);
  const bad = all.find(({ matrix }) => unrunnableReason(matrix));
  if (bad) {
    throw new UsageError(
      `${bad.name}: ${unrunnableReason(bad.matrix)}; import with --dtype f32, f16, q8 or q4 to convert ` +
        '(f32 keeps the dequantized values exactly)',
    );
  }
  const slow = all.filter(({ matrix }) => isSlowPath(matrix)).length;
  if (slow && !quiet) {
    console.error(
      `note: ${slow} matrices are 4-bit blocks with float zero points (GGUF Q4_K); they run exactly but on ` +
        "onnxruntime's slow unpacked path (about 25x slower per weight on CPU); --dtype q8 or q4 re-quantizes them",
    );
  }
}
