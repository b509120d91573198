export {
  createSession,
  type Device,
  executionProviders,
  explainEpFailure,
  ortLibDir,
  parseDevice,
  type SessionConfig,
  sessionOptions,
} from './device';
export {
  CUDA_RUNTIME_LIBS,
  CUDNN_LIBS,
  checkDevice,
  type DevicePlan,
  type DevicePlanOptions,
  type DeviceProbes,
  detectNvidiaGpus,
  deviceProblems,
  missingCudaProviderLibs,
  ORT_CUDA_PROVIDER_LIBS,
  resolveDevicePlan,
} from './device-plan';
export { KvCache } from './kv-cache';
export {
  createOrtStage,
  createOrtStageFromGraph,
  defaultGraphOptions,
  type KvCacheMode,
  OrtStage,
  type OrtStageOptions,
  presentOutputNames,
  type StageGraphInfo,
} from './ort-stage';
export {
  busBytes,
  type CacheDesign,
  cacheDesignFor,
  type Provider,
  providerOf,
  stageTransfers,
  type TransferItem,
  type TransferShape,
  transferTable,
} from './transfer';
