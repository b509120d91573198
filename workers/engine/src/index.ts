/** @ppsd/engine: Llama models on onnxruntime-node with self-speculative decoding. */

export type { DecoderName, SpeculationStats, StageTime } from './decode/decoder';
export { acceptanceRate, meanAcceptedLength } from './decode/decoder';
export { MAX_TOP_LOGPROBS, type TokenLogprob, type TopLogprob } from './decode/logprobs';
export type { DecoderPlan } from './decoders';
export {
  Engine,
  type EngineGenerateParams,
  type EngineOptions,
  PromptTooLongError,
  type SchedulerStats,
} from './engine';
export { type EngineHandle, EngineThread, type EngineThreadOptions } from './engine-thread';
export type {
  FinishReason,
  GenerateParams,
  GenerationResult,
  OnTokens,
  TextSegment,
  TokenEvent,
} from './generate/generate';
export type { LlamaConfig, LlamaModel } from './model/llama';
export {
  hashBytes,
  type LoadedPackage,
  loadPackage,
  MANIFEST_FILE,
  type PackageManifest,
  packageTokenizerOptions,
  parseManifest,
  readManifest,
  verifyPackage,
} from './package';
export { checkDevice, type Device, type DevicePlan, resolveDevicePlan } from './runtime';
export { loadTokenizer, type Tokenizer } from './tokenizer';
