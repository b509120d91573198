/** The engine-only `ppsd` entry (no S3, no service): what tests and engine users run. bin/ppsd runs apps/cli. */
import { engineCommands, runCli } from './commands';

runCli(process.argv.slice(2), engineCommands);
