/**
 * `ppsd` (bin/ppsd): the engine's commands plus those that need more than the engine (S3 publishing, the
 * admin API client). Kept apart from the engine so the workspace graph stays acyclic:
 * cli -> api / model-store -> engine.
 */
import { type Command, engineCommands, runCli } from '@ppsd/engine/cli';

const commands: Record<string, Command> = {
  ...engineCommands,
  publish: {
    summary: 'upload a model package to S3 (s3://bucket/prefix)',
    load: () => import('@ppsd/model-store/cli-publish'),
  },
  admin: {
    summary: 'operate the service over its admin API: tenants, keys, quotas, usage (ppsd admin --help)',
    load: () => import('./admin'),
  },
};

runCli(process.argv.slice(2), commands);
