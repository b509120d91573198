/** `ppsd admin ...`: the admin API client of @ppsd/api (plain HTTP), with the process's env and stdio. */
import { AdminCliError, runAdmin } from '@ppsd/api/cli/admin';

export async function run(argv: string[]): Promise<void> {
  try {
    await runAdmin(argv, {
      env: process.env,
      fetch,
      out: (s) => process.stdout.write(`${s}\n`),
      err: (s) => process.stderr.write(`${s}\n`),
    });
  } catch (err) {
    if (!(err instanceof AdminCliError)) throw err;
    process.stderr.write(`ppsd admin: ${err.message}\n`);
    process.exit(err.exitCode);
  }
}
