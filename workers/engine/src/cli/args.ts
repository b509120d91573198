import { type ParseArgsConfig, parseArgs } from 'node:util';
import { MATRIX_DTYPES, type MatrixDtype } from '../model/matrix';

/** An error the user caused (bad flag, missing file): printed without a stack trace, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * Parses a sub-command's flags with node:util's parseArgs, turning its errors into UsageErrors and
 * printing `help` for --help.
 */
export function parseCommandArgs<O extends Options>(argv: string[], options: O, help: string) {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(help);
    process.exit(0);
  }
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${help}`);
  }
}

export function numberFlag(value: string | undefined, name: string, fallback?: number): number {
  if (value === undefined) {
    if (fallback === undefined) throw new UsageError(`--${name} is required`);
    return fallback;
  }
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${value}'`);
  return n;
}

/** `--dtype`: one of the package dtypes (model/matrix.ts). */
export function dtypeFlag(value: string | undefined, fallback: MatrixDtype): MatrixDtype {
  if (value === undefined) return fallback;
  if (!(MATRIX_DTYPES as readonly string[]).includes(value))
    throw new UsageError(`--dtype must be one of ${MATRIX_DTYPES.join(', ')}, got '${value}'`);
  return value as MatrixDtype;
}

/** Help text for --dtype, shared by import, synth and quantize. */
export const DTYPE_HELP = `f32 | f16 | bf16 | q8 | q4 (q8/q4: blocks of 32 inputs, one scale per
                     block; a matrix whose inputs are no multiple of 32 keeps the wider type)`;
