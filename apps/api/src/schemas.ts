/**
 * Request and response schemas: they validate requests and generate /openapi.json. Fields the server
 * reads are checked strictly (types, ranges). OpenAI fields it cannot honour (n > 1, best_of > 1, echo,
 * suffix, tools, response_format other than text, ...) are refused with a 400 naming the field, never
 * silently ignored; OpenAI fields that do not change the output (user, metadata, store, ...) are
 * accepted. Fields OpenAI does not define are ignored.
 */
import { z } from '@hono/zod-openapi';
import {
  BLOCK_DECODERS,
  DECODER_NAMES,
  type DecoderName,
  MAX_TOP_LOGPROBS,
  PIPELINE_DECODERS,
} from '@ppsd/contract';

export const ErrorSchema = z
  .object({
    error: z.object({
      message: z.string(),
      type: z.string(),
      code: z.string().nullable(),
      param: z.string().nullable(),
    }),
  })
  .openapi('Error');

const SpeculationSchema = z
  .union([
    z.enum(['auto', 'off']),
    z
      .object({
        decoder: z.enum(DECODER_NAMES as unknown as [DecoderName, ...DecoderName[]]),
        stages: z.number().int().min(2).max(64).optional().openapi({
          description: "ppsd / spd pipeline depth; at most the workers' maxStages (one stage per device)",
        }),
        draftLength: z
          .number()
          .int()
          .min(1)
          .max(64)
          .optional()
          .openapi({ description: 'eesd / dv fixed draft block length (default: adaptive)' }),
      })
      .superRefine((s, ctx) => {
        if (s.stages !== undefined && !PIPELINE_DECODERS.includes(s.decoder))
          ctx.addIssue({
            code: 'custom',
            path: ['stages'],
            message: `applies to the pipeline decoders (${PIPELINE_DECODERS.join(', ')}), not ${s.decoder}`,
          });
        if (s.draftLength !== undefined && !BLOCK_DECODERS.includes(s.decoder))
          ctx.addIssue({
            code: 'custom',
            path: ['draftLength'],
            message: `applies to the block drafters (${BLOCK_DECODERS.join(', ')}), not ${s.decoder}`,
          });
      }),
  ])
  .openapi('Speculation', {
    description:
      "Speculative decoding: 'auto' (the worker's default decoder), 'off' (plain AR) or a decoder.",
  });

const Stop = z.union([z.string(), z.array(z.string()).max(4)]).nullish();

const Penalty = z.number().min(-2).max(2).nullish();

/** Sampling and extension parameters shared by every generation request. */
const sampling = {
  max_tokens: z.number().int().min(1).nullish().openapi({ description: 'Tokens to generate at most.' }),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  seed: z.number().int().min(0).max(2_147_483_647).nullish(),
  stop: Stop,
  logit_bias: z
    .record(z.string().regex(/^\d+$/, 'keys are token ids'), z.number().min(-100).max(100))
    .nullish()
    .openapi({ description: 'Token id -> bias added to its logit (-100 bans, 100 forces).' }),
  presence_penalty: Penalty,
  frequency_penalty: Penalty,
  speculation: SpeculationSchema.optional(),
  user: z.string().max(256).nullish().openapi({ description: 'Kept with the job metadata only.' }),
};

/**
 * An OpenAI field this server cannot honour: a 400 naming it unless it is absent, null or `harmless`
 * (a value that asks for what the server does anyway).
 */
const refused = (harmless: (v: unknown) => boolean = () => false) =>
  z
    .unknown()
    .optional()
    .refine((v) => v == null || harmless(v), { message: 'is not supported by this server' })
    .openapi({ description: 'Not supported: refused with 400 when set.' });

/** Completion logprobs: the top alternatives per token, 0..5 (OpenAI's limit). */
const CompletionLogprobs = z.number().int().min(0).max(5).nullish().openapi({
  description: "Each token's log-probability with this many alternatives (of the model's raw distribution).",
});

const streaming = {
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  cancel_on_disconnect: z
    .boolean()
    .optional()
    .openapi({ description: 'Extension: cancel the job when the client disconnects (default false).' }),
};

const unsupported = {
  n: z.literal(1).nullish().openapi({ description: 'Only 1 is supported.' }),
  best_of: z.literal(1).nullish(),
  echo: z.literal(false).nullish(),
  suffix: refused((v) => v === ''),
};

/**
 * One rule for every text a request is billed for (prompt, message content, summarize text) on every
 * endpoint: empty or whitespace-only is a 400. A client sending one has a bug, and would pay for nothing.
 */
export const InputText = z.string().refine((s) => s.trim().length > 0, {
  message: 'must not be empty or only whitespace',
});

export const CompletionRequest = z
  .object({
    model: z.string().min(1),
    prompt: z.union([InputText, z.array(InputText).length(1)]),
    logprobs: CompletionLogprobs,
    ...sampling,
    ...streaming,
    ...unsupported,
  })
  .openapi('CompletionRequest');

const ContentPart = z.object({ type: z.literal('text'), text: z.string() });

/** A message's text, string or parts; the parts together must say something. */
const MessageContent = z
  .union([z.string(), z.array(ContentPart)])
  .refine((c) => (typeof c === 'string' ? c : c.map((p) => p.text).join('')).trim().length > 0, {
    message: 'must not be empty or only whitespace',
  });

export const ChatMessageSchema = z
  .object({
    role: z.enum(['system', 'developer', 'user', 'assistant']),
    content: MessageContent,
    name: z.string().optional(),
  })
  .openapi('ChatMessage');

/** Chat fields that would change the answer in ways this server does not implement. */
const chatUnsupported = {
  n: unsupported.n,
  tools: refused((v) => Array.isArray(v) && v.length === 0),
  tool_choice: refused((v) => v === 'none'),
  parallel_tool_calls: refused(),
  functions: refused(),
  function_call: refused((v) => v === 'none'),
  response_format: refused((v) => (v as { type?: unknown })?.type === 'text'),
  audio: refused(),
  modalities: refused((v) => Array.isArray(v) && v.length === 1 && v[0] === 'text'),
  prediction: refused(),
  reasoning_effort: refused(),
  verbosity: refused(),
  web_search_options: refused(),
};

export const ChatRequest = z
  .object({
    model: z.string().min(1),
    messages: z.array(ChatMessageSchema).min(1),
    max_completion_tokens: z.number().int().min(1).nullish(),
    logprobs: z.boolean().nullish().openapi({
      description: "Each output token's log-probability (of the model's raw distribution).",
    }),
    top_logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
    ...sampling,
    ...streaming,
    ...chatUnsupported,
  })
  .refine((b) => b.top_logprobs == null || b.logprobs === true, {
    message: 'needs logprobs: true',
    path: ['top_logprobs'],
  })
  .openapi('ChatCompletionRequest');

export const SummarizeRequest = z
  .object({
    model: z.string().min(1).optional().openapi({ description: 'Defaults to the first served model.' }),
    text: InputText,
    logprobs: CompletionLogprobs,
    ...sampling,
    ...streaming,
  })
  .openapi('SummarizeRequest');

export const JobCreateRequest = z
  .object({
    model: z.string().min(1).optional(),
    prompt: InputText.optional(),
    messages: z.array(ChatMessageSchema).min(1).optional(),
    text: InputText.optional(),
    logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullish().openapi({
      description: 'Token events of the job stream carry logprobs with this many alternatives.',
    }),
    ...sampling,
  })
  .refine((b) => [b.prompt, b.messages, b.text].filter((v) => v !== undefined).length === 1, {
    message: 'give exactly one of prompt (completion), messages (chat) or text (summarize)',
    path: ['prompt'],
  })
  .openapi('JobCreateRequest');

const Usage = z
  .object({
    prompt_tokens: z.number().int(),
    completion_tokens: z.number().int(),
    total_tokens: z.number().int(),
  })
  .openapi('Usage');

const Finish = z.enum(['stop', 'length']);

const CompletionLogprobsObject = z
  .object({
    tokens: z.array(z.string()),
    token_logprobs: z.array(z.number()),
    top_logprobs: z.array(z.record(z.string(), z.number())),
    text_offset: z.array(z.number().int()),
  })
  .nullable()
  .openapi('CompletionLogprobs');

const TopLogprobSchema = z.object({
  token: z.string(),
  logprob: z.number(),
  bytes: z.array(z.number().int()),
});

const ChatLogprobsObject = z
  .object({
    content: z.array(TopLogprobSchema.extend({ top_logprobs: z.array(TopLogprobSchema) })),
    refusal: z.null(),
  })
  .nullable()
  .openapi('ChatLogprobs');

export const CompletionResponse = z
  .object({
    id: z.string(),
    object: z.literal('text_completion'),
    created: z.number().int(),
    model: z.string(),
    choices: z.array(
      z.object({
        text: z.string(),
        index: z.number().int(),
        logprobs: CompletionLogprobsObject,
        finish_reason: Finish,
      }),
    ),
    usage: Usage,
  })
  .openapi('Completion');

export const ChatResponse = z
  .object({
    id: z.string(),
    object: z.literal('chat.completion'),
    created: z.number().int(),
    model: z.string(),
    choices: z.array(
      z.object({
        index: z.number().int(),
        message: z.object({ role: z.literal('assistant'), content: z.string(), refusal: z.null() }),
        logprobs: ChatLogprobsObject,
        finish_reason: Finish,
      }),
    ),
    usage: Usage,
  })
  .openapi('ChatCompletion');

const SpeculationSummarySchema = z
  .object({
    decoder: z.string(),
    draftsProposed: z.number(),
    draftsAccepted: z.number(),
    acceptanceRate: z.number(),
    meanAcceptedLength: z.number(),
    stages: z.array(z.object({ busyMs: z.number(), idleMs: z.number() })).optional(),
    pipelineStages: z.number().int().optional().openapi({ description: 'ppsd / spd: the depth it ran with' }),
    draftLength: z
      .union([z.number().int(), z.literal('adaptive')])
      .optional()
      .openapi({ description: 'eesd / dv: the block length it ran with' }),
  })
  .openapi('SpeculationSummary');

export const JobSchema = z
  .object({
    id: z.string(),
    object: z.literal('job'),
    status: z.enum(['queued', 'running', 'completed', 'failed', 'cancelled']),
    model: z.string(),
    kind: z.enum(['completion', 'chat', 'summarize']),
    created: z.number().int(),
    attempt: z.number().int(),
    text: z.string(),
    finish_reason: z.enum(['stop', 'length', 'cancelled', 'error']).nullable(),
    usage: Usage,
    speculation: SpeculationSummarySchema.nullable(),
    error: z.object({ message: z.string(), code: z.string() }).nullable(),
    last_event_id: z.string().nullable(),
  })
  .openapi('Job');

export const JobCreated = z
  .object({ id: z.string(), object: z.literal('job'), status: JobSchema.shape.status })
  .openapi('JobCreated');

export const ModelSchema = z
  .object({
    id: z.string(),
    object: z.literal('model'),
    created: z.number().int(),
    owned_by: z.string(),
    max_model_len: z.number().int(),
    dtype: z.string().optional().openapi({
      description: 'ppsd extension: how the package stores its weights (f32, f16, bf16, q8, q4)',
    }),
  })
  .openapi('Model');

export const ModelList = z
  .object({ object: z.literal('list'), data: z.array(ModelSchema) })
  .openapi('ModelList');

const UsageRecordSchema = z
  .object({
    tenant: z.string(),
    jobId: z.string(),
    attempt: z.number().int(),
    model: z.string(),
    status: z.enum(['completed', 'failed', 'cancelled', 'timed_out']),
    finishReason: z.enum(['stop', 'length', 'cancelled', 'error']),
    promptTokens: z.number(),
    completionTokens: z.number(),
    draftTokensProposed: z.number(),
    draftTokensAccepted: z.number(),
    decoder: z.enum(DECODER_NAMES as unknown as [string, ...string[]]),
    wallMs: z.number(),
    deviceSeconds: z.number(),
    endedAt: z.number(),
  })
  .openapi('UsageRecord');

const Totals = z
  .object({
    jobs: z.number().int(),
    prompt_tokens: z.number(),
    completion_tokens: z.number(),
    total_tokens: z.number(),
    draft_tokens_proposed: z.number(),
    draft_tokens_accepted: z.number(),
    device_seconds: z.number(),
  })
  .openapi('UsageTotals');

export const UsageResponse = z
  .object({
    object: z.literal('usage'),
    tenant: z.string(),
    from: z.number().int(),
    to: z.number().int(),
    data: z.array(UsageRecordSchema),
    jobs: z.array(
      z.object({ job_id: z.string(), model: z.string(), attempts: z.number().int() }).extend(Totals.shape),
    ),
    totals: Totals,
  })
  .openapi('Usage');

export const Time = z.string().optional().openapi({
  description:
    'ISO 8601 date/time (e.g. 2026-12-02 or 2026-12-02T10:00:00Z) or non-negative milliseconds since epoch.',
});

export const IdParam = z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) });

export const IdempotencyHeader = z.object({
  'idempotency-key': z
    .string()
    .min(1)
    .max(255)
    .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces')
    .optional()
    .openapi({
      param: { name: 'idempotency-key', in: 'header' },
      description: 'Idempotency-Key: the same key returns the same job',
    }),
});

/** Documented error responses (typed as nothing extra: errors are thrown, never returned by handlers). */
export const errorResponses = (
  ...codes: (400 | 401 | 403 | 404 | 409 | 413 | 429 | 500 | 503)[]
): Record<never, never> => {
  const text: Record<number, string> = {
    400: 'Invalid request',
    401: 'Missing, unknown or revoked API key',
    403: 'A valid key without the right: a tenant key on /admin/, or a model the tenant may not use',
    404: 'Unknown model, job, tenant or key',
    409: 'Already exists (or would lock every admin out)',
    413: 'Prompt too long for the model',
    429: 'Tenant queue limit or token quota reached (see Retry-After)',
    500: 'The job failed',
    503: 'Overloaded or Redis unreachable (see Retry-After)',
  };
  return Object.fromEntries(
    codes.map((c) => [c, { description: text[c], content: { 'application/json': { schema: ErrorSchema } } }]),
  );
};
