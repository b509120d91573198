/** Errors in OpenAI's shape: `{error: {message, type, code, param}}` with the matching HTTP status. */
import type { ContentfulStatusCode } from 'hono/utils/http-status';

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable';

export interface OpenAIErrorBody {
  error: { message: string; type: ErrorType; code: string | null; param: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    message: string,
    readonly type: ErrorType,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, code: this.code, param: this.param } };
  }
}

export const invalid = (message: string, param: string | null = null, code = 'invalid_request') =>
  new ApiError(400, message, 'invalid_request_error', code, param);

export const unauthorized = (message: string, code = 'invalid_api_key') =>
  new ApiError(401, message, 'authentication_error', code);

export const forbidden = (message: string, code: string, param: string | null = null) =>
  new ApiError(403, message, 'permission_error', code, param);

export const notFound = (message: string, code: string, param: string | null = null) =>
  new ApiError(404, message, 'not_found_error', code, param);

export const tooLong = (message: string, param = 'prompt') =>
  new ApiError(413, message, 'invalid_request_error', 'context_length_exceeded', param);

export const tooMany = (message: string, code: string, retryAfterSeconds: number) =>
  new ApiError(429, message, 'rate_limit_error', code, null, {
    'Retry-After': String(Math.max(1, Math.ceil(retryAfterSeconds))),
  });

export const unavailable = (message: string, code = 'service_unavailable', retryAfterSeconds = 1) =>
  new ApiError(503, message, 'service_unavailable', code, null, {
    'Retry-After': String(Math.max(1, Math.ceil(retryAfterSeconds))),
  });

/** True for the errors ioredis/BullMQ raise when Redis cannot be reached (the request path fails fast). */
export function isRedisUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === 'MaxRetriesPerRequestError') return true;
  return /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|enableOfflineQueue|Connection is closed|Stream isn't writeable|LOADING|Redis timed out|MISCONF/i.test(
    err.message,
  );
}

/** Rejects after `ms` so a producer call can never hang a request (BullMQ may wait for a connection). */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`Redis timed out: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
