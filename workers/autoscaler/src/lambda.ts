/**
 * Backlog publisher as a Lambda function, invoked every minute by an EventBridge schedule (see
 * terraform/modules/backlog_publisher). One invocation = one tick: read the queues, put the metrics,
 * wake the group from zero if needed. The Redis connection and clients live across warm invocations.
 */
import { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { Redis } from 'ioredis';
import { publisherConfigFromEnv } from './config';
import { errorMessage, jsonLogger } from './log';
import { type BacklogPublisher, createBacklogPublisher, type TickReport } from './publisher';

const log = jsonLogger('backlog-publisher');
let publisher: BacklogPublisher | null = null;

function getPublisher(): BacklogPublisher {
  if (publisher) return publisher;
  const config = publisherConfigFromEnv();
  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 2, connectTimeout: 5_000 });
  redis.on('error', (err) => log.warn('redis error', { error: errorMessage(err) }));
  publisher = createBacklogPublisher({
    redis,
    queues: config.queues,
    prefix: config.prefix,
    cloudwatch: new CloudWatchClient({ region: config.region }),
    autoscaling: new AutoScalingClient({ region: config.region }),
    asgName: config.asgName,
    namespace: config.namespace,
    metricName: config.metricName,
    targetPerWorker: config.targetPerWorker,
    wakeFromZero: config.wakeFromZero,
    logger: log,
  });
  return publisher;
}

export async function handler(): Promise<Omit<TickReport, 'queues'> & { queues: string[] }> {
  const report = await getPublisher().tick();
  return { ...report, queues: report.queues.map((q) => q.queue) };
}
