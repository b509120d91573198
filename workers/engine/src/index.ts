/** @ppsd/engine: Llama models on onnxruntime-node with self-speculative decoding. */
export { Engine, PromptTooLongError, type EngineOptions, type EngineGenerateParams } from './engine';
export type { DecoderPlan } from './decoders';
export type { GenerateParams, GenerationResult, TokenEvent, FinishReason, OnTokens } from './generate/generate';
export type { DecoderName, SpeculationStats, StageTime } from './decode/decoder';
export { acceptanceRate, meanAcceptedLength } from './decode/decoder';
export type { LlamaConfig, LlamaModel } from './model/llama';
