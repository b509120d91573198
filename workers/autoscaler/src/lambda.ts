/**
 * Backlog publisher as a Lambda function, invoked every minute by an EventBridge schedule (see
 * terraform/modules/backlog_publisher). One invocation = one tick: read the queues, put the metrics,
 * wake the group from zero if needed. The Redis connection and clients live across warm invocations.
 */
import { Redis } from 'ioredis';
import { publisherConfigFromEnv } from './config';
import { errorMessage, jsonLogger } from './log';
import {
  awsPublisherOptions,
  type BacklogPublisher,
  createBacklogPublisher,
  type TickReport,
} from './publisher';

const log = jsonLogger('backlog-publisher');
let publisher: BacklogPublisher | null = null;

function getPublisher(): BacklogPublisher {
  if (publisher) return publisher;
  const config = publisherConfigFromEnv();
  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 2, connectTimeout: 5_000 });
  redis.on('error', (err) => log.warn('redis error', { error: errorMessage(err) }));
  publisher = createBacklogPublisher(awsPublisherOptions(config, redis, log));
  return publisher;
}

export async function handler(): Promise<Omit<TickReport, 'queues'> & { queues: string[] }> {
  const report = await getPublisher().tick();
  return { ...report, queues: report.queues.map((q) => q.queue) };
}
