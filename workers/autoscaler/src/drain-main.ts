/**
 * Lifecycle drain watcher, run on each GPU instance as its own systemd unit
 * (infra/systemd/ppsd-drain-watcher.service): `node --import tsx workers/autoscaler/src/drain-main.ts`.
 */
import { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
import { ConfigError, drainConfigFromEnv } from './config';
import { runDrainWatcher } from './drain';
import { createImds } from './imds';
import { errorMessage, jsonLogger } from './log';
import { parseStopSpec } from './stop';

const log = jsonLogger('drain-watcher');

async function main(): Promise<void> {
  const config = drainConfigFromEnv();
  const imds = createImds({ endpoint: config.imdsEndpoint });
  const region = config.region ?? (await imds.region());
  const { kind, target, stop } = parseStopSpec(config.stopSpec, {
    timeoutSeconds: config.drainTimeoutSeconds,
    socketPath: config.dockerSocket,
  });
  const controller = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => controller.abort());
  log.info('watching lifecycle state', {
    asg: config.asgName,
    hook: config.hookName,
    stop: `${kind}:${target}`,
  });
  const outcome = await runDrainWatcher({
    imds,
    autoscaling: new AutoScalingClient({ region }),
    asgName: config.asgName,
    hookName: config.hookName,
    stopWorker: stop,
    pollIntervalMs: config.pollIntervalMs,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    signal: controller.signal,
    logger: log,
  });
  log.info('drain watcher done', { outcome });
  if (outcome === 'drained') {
    // Stay up until the instance goes away, so systemd does not restart the watcher (Restart=always)
    // and drain a second time.
    await new Promise<void>((resolve) => controller.signal.addEventListener('abort', () => resolve()));
  }
}

main().catch((err) => {
  if (err instanceof ConfigError) log.error(err.message, { problems: err.problems });
  else log.error('drain watcher crashed', { error: errorMessage(err) });
  process.exitCode = 1;
});
