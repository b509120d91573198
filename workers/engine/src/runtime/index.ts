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
export { KvCache } from './kv-cache';
export {
  createOrtStage,
  createOrtStageFromGraph,
  OrtStage,
  type OrtStageOptions,
  type StageGraphInfo,
} from './ort-stage';
