/** Entry of `ppsd admin` (bin/ppsd routes it here): runs ./admin with the process's env, fetch and stdio. */
import { AdminCliError, runAdmin } from './admin';

runAdmin(process.argv.slice(2), {
  env: process.env,
  fetch,
  out: (s) => process.stdout.write(`${s}\n`),
  err: (s) => process.stderr.write(`${s}\n`),
}).catch((err: unknown) => {
  if (err instanceof AdminCliError) {
    process.stderr.write(`ppsd admin: ${err.message}\n`);
    process.exit(err.exitCode);
  }
  process.stderr.write(`ppsd admin: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
