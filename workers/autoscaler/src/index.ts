export {
  createQueueLoadReader,
  QUEUE_PREFIX,
  type QueueLoad,
  type QueueLoadReader,
  queueNameForModel,
} from './backlog';
export {
  backlogPerWorker,
  type CapacityDecision,
  type CapacityInput,
  type CapacityReason,
  desiredCapacity,
} from './capacity';
export {
  ConfigError,
  type DrainConfig,
  drainConfigFromEnv,
  type PublisherConfig,
  publisherConfigFromEnv,
} from './config';
export { type DrainOutcome, type DrainWatcherOptions, isTerminating, runDrainWatcher } from './drain';
export { createImds, DEFAULT_IMDS_ENDPOINT, type Imds, ImdsError, type ImdsOptions } from './imds';
export { type AwsClientLike, fieldsLogger, jsonLogger, type Logger, silentLogger } from './log';
export {
  createInstanceProtection,
  type InstanceProtection,
  type InstanceProtectionOptions,
  instanceProtectionFromEnv,
  noopInstanceProtection,
} from './protection';
export {
  type BacklogPublisher,
  createBacklogPublisher,
  DEFAULT_METRIC_NAME,
  DEFAULT_NAMESPACE,
  type PublisherOptions,
  runBacklogPublisher,
  type TickReport,
} from './publisher';
export { dockerStopper, parseStopSpec, systemdStopper, type WorkerStopper } from './stop';
