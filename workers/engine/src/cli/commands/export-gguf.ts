/**
 * `ppsd export-gguf <package> --type T --out FILE`: the package as a llama-architecture GGUF that
 * llama.cpp loads (Q/K rows back in interleaved order, the tokenizer in the GGUF metadata). q8/q4 matrices
 * with 32-value blocks go out as Q8_0/Q4_0 exactly; float matrices are quantized by llama.cpp's reference
 * quantizers. The benchmark feeds the same file to llama.cpp and to `ppsd import`.
 */
import path from 'node:path';
import { type GgufFileType, writeGgufLlama } from '../../formats/gguf-llama';
import { stderrProgress } from '../../formats/progress';
import { loadPackage } from '../../package';
import { parseCommandArgs, UsageError } from '../args';

const TYPES: GgufFileType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'];

const HELP = `usage: ppsd export-gguf <package> --type T --out <file.gguf> [options]

Writes a model package as a GGUF file (llama architecture, GGUF v3).

options:
  --type T           ${TYPES.join(' | ')} (norms stay F32; matrices whose inputs are no multiple of 32
                     stay F32 in q8_0/q4_0 files)
  --out FILE         the .gguf file to write
  --quiet            no progress output

The package's tokenizer must be a llama2.c tokenizer.bin (SentencePiece-style vocabulary).`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(
    argv,
    { type: { type: 'string' }, out: { type: 'string' }, quiet: { type: 'boolean' } },
    HELP,
  );
  if (positionals.length !== 1) throw new UsageError(`give exactly one package folder\n\n${HELP}`);
  const type = values.type as GgufFileType | undefined;
  if (!type || !TYPES.includes(type))
    throw new UsageError(`--type must be one of ${TYPES.join(', ')}\n\n${HELP}`);
  if (!values.out) throw new UsageError(`--out is required\n\n${HELP}`);
  const quiet = values.quiet === true;
  const dir = path.resolve(positionals[0]);
  const pkg = await loadPackage(dir, { onProgress: quiet ? undefined : stderrProgress('reading') });
  if (pkg.manifest.tokenizer.kind !== 'llama2c') {
    throw new UsageError(
      `${dir}: export needs a llama2.c tokenizer.bin; this package has ${pkg.manifest.tokenizer.file}`,
    );
  }
  const writing = quiet ? undefined : stderrProgress('writing');
  const out = path.resolve(values.out);
  const res = await writeGgufLlama(out, pkg.model, path.join(dir, pkg.manifest.tokenizer.file), {
    type,
    name: pkg.manifest.name,
    chatTemplate: pkg.manifest.chat?.template,
    onProgress: writing,
  });
  writing?.end();
  if (!quiet)
    console.error(
      `wrote ${out} (${type}, ${(res.bytes / 1e6).toFixed(1)} MB, sha256 ${res.sha256.slice(0, 12)})`,
    );
}
