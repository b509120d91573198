/**
 * `ppsd quantize <package> --dtype D --out DIR`: the same model in another dtype, as a new package (the
 * source package is verified first and left as it is). Exit heads and drafters are not carried over: they
 * were fitted to the source's hidden states; run `ppsd calibrate` on the new package.
 */
import path from 'node:path';
import { stderrProgress } from '../../formats/progress';
import { convertModel } from '../../model/llama';
import { loadPackage, writePackage } from '../../package';
import { DTYPE_HELP, dtypeFlag, parseCommandArgs, UsageError } from '../args';

const HELP = `usage: ppsd quantize <package> --dtype D --out <dir> [options]

Converts every weight matrix of a model package to another dtype and writes a new package.

options:
  --dtype D          ${DTYPE_HELP}
  --out DIR          package folder to create (must not exist, or be empty)
  --name N           package name (default: <source name>-<dtype>)
  --quiet            no progress output`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(
    argv,
    {
      dtype: { type: 'string' },
      out: { type: 'string' },
      name: { type: 'string' },
      quiet: { type: 'boolean' },
    },
    HELP,
  );
  if (positionals.length !== 1) throw new UsageError(`give exactly one package folder\n\n${HELP}`);
  if (!values.dtype) throw new UsageError(`--dtype is required\n\n${HELP}`);
  if (!values.out) throw new UsageError(`--out is required\n\n${HELP}`);
  const dtype = dtypeFlag(values.dtype, 'f32');
  const quiet = values.quiet === true;
  const src = path.resolve(positionals[0]);
  const pkg = await loadPackage(src, { onProgress: quiet ? undefined : stderrProgress('reading') });
  const converting = quiet ? undefined : stderrProgress(`converting to ${dtype} (f32 bytes)`);
  const model = convertModel(
    pkg.model,
    dtype,
    converting && ((done, total) => converting(4 * done, 4 * total)),
  );
  converting?.end();
  const writing = quiet ? undefined : stderrProgress('writing weights');
  const manifest = await writePackage(
    path.resolve(values.out),
    model,
    path.join(src, pkg.manifest.tokenizer.file),
    {
      name: values.name ?? `${pkg.manifest.name}-${dtype}`,
      dtype,
      synthetic: pkg.manifest.synthetic,
      source: `${pkg.manifest.source ?? src} (converted from ${pkg.manifest.dtype})`,
      onProgress: writing,
    },
  );
  writing?.end();
  if (!quiet) {
    const kept = Object.entries(manifest.tensors ?? {}).filter(([, t]) => t.dtype !== dtype);
    const note = kept.length
      ? `; ${kept.length} matrices kept a wider dtype (${kept[0][0]}: ${kept[0][1].dtype}, ...)`
      : '';
    console.error(`wrote ${dtype} package '${manifest.name}' to ${values.out}${note}`);
  }
}
