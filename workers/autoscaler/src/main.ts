/**
 * Backlog publisher as a long-running process: `node --import tsx workers/autoscaler/src/main.ts`.
 * In AWS the same tick runs as a scheduled Lambda (./lambda.ts); this entry is for a container or
 * host that runs it continuously (e.g. next to the local stack, or an ECS task if you prefer one).
 */
import { Redis } from 'ioredis';
import { ConfigError, publisherConfigFromEnv } from './config';
import { errorMessage, jsonLogger } from './log';
import { awsPublisherOptions, runBacklogPublisher } from './publisher';

const log = jsonLogger('backlog-publisher');

async function main(): Promise<void> {
  const config = publisherConfigFromEnv();
  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 3, enableOfflineQueue: true });
  redis.on('error', (err) => log.warn('redis error', { error: errorMessage(err) }));
  const controller = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      log.info('stopping', { signal: sig });
      controller.abort();
    });
  }
  log.info('starting', { asg: config.asgName, queues: config.queues, intervalMs: config.intervalMs });
  try {
    await runBacklogPublisher({
      ...awsPublisherOptions(config, redis, log),
      intervalMs: config.intervalMs,
      signal: controller.signal,
    });
  } finally {
    redis.disconnect();
  }
}

main().catch((err) => {
  if (err instanceof ConfigError) log.error(err.message, { problems: err.problems });
  else log.error('backlog publisher crashed', { error: errorMessage(err) });
  process.exitCode = 1;
});
