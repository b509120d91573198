/**
 * Request and response schemas: they validate requests and generate /openapi.json. Unknown request
 * fields are ignored (OpenAI clients send fields this server does not use, e.g. `user`); fields it does
 * read are checked strictly (types, ranges), and options it cannot honour (n > 1, echo, best_of > 1)
 * are rejected rather than silently ignored.
 */
import { z } from '@hono/zod-openapi';
import { DECODER_NAMES } from '@ppsd/contract';

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
    z.object({
      decoder: z.enum(DECODER_NAMES as unknown as [string, ...string[]]),
      stages: z.number().int().min(1).max(64).optional(),
      draftLength: z.number().int().min(1).max(64).optional(),
    }),
  ])
  .openapi('Speculation', {
    description:
      "Speculative decoding: 'auto' (the worker's default decoder), 'off' (plain AR) or a decoder.",
  });

const Stop = z.union([z.string(), z.array(z.string()).max(4)]).nullish();

/** Sampling and extension parameters shared by every generation request. */
const sampling = {
  max_tokens: z.number().int().min(1).nullish().openapi({ description: 'Tokens to generate at most.' }),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  seed: z.number().int().min(0).max(2_147_483_647).nullish(),
  stop: Stop,
  speculation: SpeculationSchema.optional(),
};

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
};

export const CompletionRequest = z
  .object({
    model: z.string().min(1),
    prompt: z.union([z.string(), z.array(z.string()).length(1)]),
    ...sampling,
    ...streaming,
    ...unsupported,
  })
  .openapi('CompletionRequest');

const ContentPart = z.object({ type: z.literal('text'), text: z.string() });

export const ChatMessageSchema = z
  .object({
    role: z.enum(['system', 'developer', 'user', 'assistant']),
    content: z.union([z.string(), z.array(ContentPart)]),
    name: z.string().optional(),
  })
  .openapi('ChatMessage');

export const ChatRequest = z
  .object({
    model: z.string().min(1),
    messages: z.array(ChatMessageSchema).min(1),
    max_completion_tokens: z.number().int().min(1).nullish(),
    ...sampling,
    ...streaming,
    n: unsupported.n,
  })
  .openapi('ChatCompletionRequest');

export const SummarizeRequest = z
  .object({
    model: z.string().min(1).optional().openapi({ description: 'Defaults to the first served model.' }),
    text: z.string().min(1),
    ...sampling,
    ...streaming,
  })
  .openapi('SummarizeRequest');

export const JobCreateRequest = z
  .object({
    model: z.string().min(1).optional(),
    prompt: z.string().optional(),
    messages: z.array(ChatMessageSchema).min(1).optional(),
    text: z.string().min(1).optional(),
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

export const CompletionResponse = z
  .object({
    id: z.string(),
    object: z.literal('text_completion'),
    created: z.number().int(),
    model: z.string(),
    choices: z.array(
      z.object({ text: z.string(), index: z.number().int(), logprobs: z.null(), finish_reason: Finish }),
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
        logprobs: z.null(),
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

export const Time = z
  .string()
  .optional()
  .openapi({ description: 'ISO 8601 date/time or milliseconds since epoch.' });

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
