/**
 * What every request body must be before a route looks at it: at most `maxBytes` (413 before parsing;
 * a chunked upload is cut off as soon as it passes the limit) and, for JSON, valid UTF-8 (400): a body
 * with broken bytes would otherwise be read with U+FFFD in their place, and the client billed for text
 * it never sent.
 */
import { isUtf8 } from 'node:buffer';
import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { ApiError, invalid } from './errors';

export const bodyTooLarge = (maxBytes: number) =>
  new ApiError(
    413,
    `The request body is larger than this service accepts (${maxBytes} bytes).`,
    'invalid_request_error',
    'request_too_large',
  );

export function requestBody(maxBytes: number): MiddlewareHandler {
  const limit = bodyLimit({
    maxSize: maxBytes,
    onError: () => {
      throw bodyTooLarge(maxBytes);
    },
  });
  return (c, next) =>
    limit(c, async () => {
      const type = c.req.header('Content-Type') ?? '';
      if (c.req.raw.body && /json/i.test(type)) {
        // Read once here; Hono caches it for the route's c.req.json().
        if (!isUtf8(new Uint8Array(await c.req.arrayBuffer())))
          throw invalid('The request body is not valid UTF-8.', null, 'invalid_utf8');
      }
      await next();
    });
}
