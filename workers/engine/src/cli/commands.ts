/**
 * The engine's `ppsd` commands and the runner every `ppsd` entry uses. Each sub-command lives in
 * ./commands/<name>.ts and exports `run(argv)`; commands are imported lazily so `ppsd --help` starts
 * instantly and a command's dependencies load only when used. Commands that need more than the engine
 * (S3 publishing, the admin API) are added by apps/cli, which depends on the engine, not the reverse.
 */
import { UsageError } from './args';

export { parseCommandArgs, UsageError } from './args';

export type Command = { summary: string; load: () => Promise<{ run(argv: string[]): Promise<void> }> };

export const engineCommands: Record<string, Command> = {
  import: {
    summary: 'import a llama2.c checkpoint or Hugging Face folder into a model package',
    load: () => import('./commands/import'),
  },
  synth: {
    summary: 'write a random-weight model package of a given shape',
    load: () => import('./commands/synth'),
  },
  quantize: {
    summary: 'convert a model package to another dtype (f16, bf16, q8, q4)',
    load: () => import('./commands/quantize'),
  },
  'export-gguf': {
    summary: 'write a model package as a GGUF file (f32, f16, bf16, q8_0, q4_0) for llama.cpp',
    load: () => import('./commands/export-gguf'),
  },
  generate: { summary: 'generate text from a model package', load: () => import('./commands/generate') },
  calibrate: {
    summary: 'fit an early-exit head or the SPD drafter and report acceptance',
    load: () => import('./commands/calibrate'),
  },
  'tune-skip': {
    summary: 'search the Draft & Verify skip set by measured tokens/s',
    load: () => import('./commands/tune-skip'),
  },
  bench: { summary: 'benchmark decoders side by side', load: () => import('./commands/bench') },
};

function usage(commands: Record<string, Command>): string {
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`);
  return `usage: ppsd <command> [options]\n\ncommands:\n${lines.join('\n')}\n\nppsd <command> --help for a command's options`;
}

/** Runs `ppsd <command> ...`: usage errors exit 2, failures exit 1 with the message. */
export function runCli(argv: string[], commands: Record<string, Command>): void {
  main(argv, commands).catch((err: unknown) => {
    if (err instanceof UsageError) {
      console.error(`ppsd: ${err.message}`);
      process.exit(2);
    }
    console.error(err instanceof Error ? `ppsd: ${err.message}` : err);
    if (process.env.PPSD_DEBUG && err instanceof Error) console.error(err.stack);
    process.exit(1);
  });
}

async function main(argv: string[], commands: Record<string, Command>): Promise<void> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h') {
    console.log(usage(commands));
    return;
  }
  const command = commands[name];
  if (!command) throw new UsageError(`unknown command '${name}'\n\n${usage(commands)}`);
  const mod = await command.load();
  await mod.run(rest);
}
