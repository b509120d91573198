/**
 * Fields of the per-model metrics hash `keys.metrics(model)`: the worker adds to them (HINCRBY /
 * HINCRBYFLOAT), the API renders them on /metrics under vLLM-style names.
 */
export const METRIC_FIELDS = {
  drafts: 'spec_decode_num_drafts_total',
  draftTokens: 'spec_decode_num_draft_tokens_total',
  acceptedTokens: 'spec_decode_num_accepted_tokens_total',
  promptTokens: 'prompt_tokens_total',
  generationTokens: 'generation_tokens_total',
  requestSuccess: 'request_success_total',
  requestFailure: 'request_failure_total',
  requestCancelled: 'request_cancelled_total',
  deviceSeconds: 'device_seconds_total',
} as const;

/** Per-stage fields: `<prefix><stage index>`. */
export const STAGE_METRIC_PREFIX = {
  busySeconds: 'stage_busy_seconds_total:',
  idleSeconds: 'stage_idle_seconds_total:',
} as const;

/**
 * Engine scheduler fields: `<prefix><batch size>` = batched steps that ran that many sequences together
 * (the worker adds what its engine's `stepsByBatchSize` grew by since its last heartbeat; the API renders
 * them as the `batch_size` histogram).
 */
export const SCHEDULER_METRIC_PREFIX = {
  batchSteps: 'batch_steps_total:',
} as const;
