/** Auth, validation (OpenAI error shape, nothing enqueued), 413, unknown routes, openapi.json. */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KEY_A, MODEL, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url, { maxPromptTokens: 100 });
});
afterAll(async () => {
  await api?.close();
  await server?.stop();
});

async function expectError(
  res: Response,
  status: number,
  type: string,
  code?: string,
  param?: string | null,
) {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/application\/json/);
  const body = (await res.json()) as { error: Record<string, unknown> };
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.type).toBe(type);
  if (code !== undefined) expect(body.error.code).toBe(code);
  if (param !== undefined) expect(body.error.param).toBe(param);
  return body.error;
}

async function queueIsEmpty() {
  const counts = await api
    .queue()
    .getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
  expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(0);
  expect(await api.redis.keys('ppsd:{job:*')).toEqual([]);
}

afterEach(queueIsEmpty);

describe('auth', () => {
  it('401 without a key, with a malformed header, with an unknown key', async () => {
    const body = { model: MODEL, prompt: 'Once' };
    await expectError(
      await api.req('/v1/completions', { key: null, body }),
      401,
      'authentication_error',
      'missing_api_key',
    );
    await expectError(
      await api.req('/v1/completions', { key: null, body, headers: { Authorization: `Basic ${KEY_A}` } }),
      401,
      'authentication_error',
    );
    await expectError(
      await api.req('/v1/models', { key: 'sk-nope-nope-nope' }),
      401,
      'authentication_error',
      'invalid_api_key',
    );
    await expectError(
      await api.req('/v1/jobs/job_x', { key: 'sk-nope-nope-nope' }),
      401,
      'authentication_error',
    );
  });

  it('keys are stored hashed; a revoked key gets 401', async () => {
    const raw = JSON.stringify(await api.redis.hgetall('ppsd:api-keys'));
    expect(raw).not.toContain(KEY_A);
    await api.app.ctx.tenants.ensureTenant('initech');
    const { key, prefix } = await api.app.ctx.tenants.issueKey('initech', 'test');
    expect((await api.req('/v1/models', { key })).status).toBe(200);
    expect(await api.app.ctx.tenants.keys.revoke(prefix, 'test')).toBe('revoked');
    await expectError(await api.req('/v1/models', { key }), 401, 'authentication_error');
    // bootstrap again with the same key does not bring it back
    expect(await api.app.ctx.tenants.addKey('initech', key)).toBe(false);
    expect((await api.req('/v1/models', { key })).status).toBe(401);
  });

  it('health endpoints need no key', async () => {
    expect((await api.req('/healthz', { key: null })).status).toBe(200);
    expect((await api.req('/openapi.json', { key: null })).status).toBe(200);
  });
});

describe('validation', () => {
  const cases: [string, string, unknown, string | null][] = [
    ['/v1/completions', 'missing model', { prompt: 'x' }, 'model'],
    ['/v1/completions', 'missing prompt', { model: MODEL }, 'prompt'],
    ['/v1/completions', 'prompt of wrong type', { model: MODEL, prompt: 42 }, 'prompt'],
    ['/v1/completions', 'negative max_tokens', { model: MODEL, prompt: 'x', max_tokens: -1 }, 'max_tokens'],
    [
      '/v1/completions',
      'fractional max_tokens',
      { model: MODEL, prompt: 'x', max_tokens: 1.5 },
      'max_tokens',
    ],
    ['/v1/completions', 'max_tokens as string', { model: MODEL, prompt: 'x', max_tokens: '5' }, 'max_tokens'],
    ['/v1/completions', 'temperature > 2', { model: MODEL, prompt: 'x', temperature: 3 }, 'temperature'],
    ['/v1/completions', 'top_p 0', { model: MODEL, prompt: 'x', top_p: 0 }, 'top_p'],
    ['/v1/completions', 'n = 2', { model: MODEL, prompt: 'x', n: 2 }, 'n'],
    [
      '/v1/completions',
      'five stop strings',
      { model: MODEL, prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] },
      'stop',
    ],
    ['/v1/completions', 'stream not boolean', { model: MODEL, prompt: 'x', stream: 'yes' }, 'stream'],
    ['/v1/completions', 'bad speculation', { model: MODEL, prompt: 'x', speculation: 'fast' }, 'speculation'],
    [
      '/v1/completions',
      'unknown decoder',
      { model: MODEL, prompt: 'x', speculation: { decoder: 'magic' } },
      'speculation',
    ],
    ['/v1/chat/completions', 'empty messages', { model: MODEL, messages: [] }, 'messages'],
    [
      '/v1/chat/completions',
      'bad role',
      { model: MODEL, messages: [{ role: 'robot', content: 'x' }] },
      'messages.0.role',
    ],
    ['/v1/summarize', 'empty text', { text: '' }, 'text'],
    [
      '/v1/jobs',
      'prompt and messages',
      { prompt: 'x', messages: [{ role: 'user', content: 'y' }] },
      'prompt',
    ],
    ['/v1/jobs', 'none of prompt/messages/text', { model: MODEL }, 'prompt'],
    ['/v1/jobs', 'negative seed', { prompt: 'x', seed: -4 }, 'seed'],
  ];
  it.each(cases)('%s: %s -> 400', async (path, _what, body, param) => {
    const e = await expectError(
      await api.req(path, { body }),
      400,
      'invalid_request_error',
      'invalid_request',
    );
    expect(e.param).toBe(param);
  });

  it('malformed JSON and a JSON array -> 400, a non-JSON content type -> 415', async () => {
    await expectError(
      await api.req('/v1/completions', { body: '{"model": "x", ' }),
      400,
      'invalid_request_error',
    );
    await expectError(await api.req('/v1/completions', { body: '[1,2]' }), 400, 'invalid_request_error');
    await expectError(
      await api.req('/v1/completions', { body: 'model=x', headers: { 'Content-Type': 'text/plain' } }),
      415,
      'invalid_request_error',
    );
  });

  it('bad Idempotency-Key header -> 400', async () => {
    await expectError(
      await api.req('/v1/jobs', { body: { prompt: 'x' }, headers: { 'Idempotency-Key': 'has space' } }),
      400,
      'invalid_request_error',
    );
  });

  it('unknown fields are ignored, unknown model -> 404 model_not_found', async () => {
    await expectError(
      await api.req('/v1/completions', { body: { model: 'gpt-9', prompt: 'x', user: 'u1' } }),
      404,
      'not_found_error',
      'model_not_found',
      'model',
    );
    await expectError(await api.req('/v1/models/gpt-9'), 404, 'not_found_error', 'model_not_found');
  });

  it('unknown endpoint and unknown job -> 404 in OpenAI shape', async () => {
    await expectError(await api.req('/v1/nothing'), 404, 'not_found_error', 'unknown_url');
    await expectError(await api.req('/v1/jobs/job_doesnotexist'), 404, 'not_found_error', 'job_not_found');
    await expectError(await api.req('/v1/jobs/job_doesnotexist/stream'), 404, 'not_found_error');
    await expectError(
      await api.req('/v1/jobs/job_doesnotexist/cancel', { method: 'POST' }),
      404,
      'not_found_error',
    );
  });
});

describe('413 prompt too long', () => {
  it('prompt + max_tokens over the context', async () => {
    const prompt = 'Once upon a time there was a little dog. '.repeat(4);
    const n = await api.model.countPromptTokens(prompt);
    expect(n).toBeLessThanOrEqual(100);
    const e = await expectError(
      await api.req('/v1/completions', { body: { model: MODEL, prompt, max_tokens: 512 - n + 1 } }),
      413,
      'invalid_request_error',
      'context_length_exceeded',
      'max_tokens',
    );
    expect(e.message).toContain(String(n));
  });

  it('prompt over PPSD_MAX_PROMPT_TOKENS (also for chat, summarize and jobs)', async () => {
    const long = 'The cat sat on the mat and looked at the sun. '.repeat(12);
    expect(await api.model.countPromptTokens(long)).toBeGreaterThan(100);
    await expectError(
      await api.req('/v1/completions', { body: { model: MODEL, prompt: long, max_tokens: 1 } }),
      413,
      'invalid_request_error',
      'context_length_exceeded',
      'prompt',
    );
    await expectError(
      await api.req('/v1/chat/completions', {
        body: { model: MODEL, messages: [{ role: 'user', content: long }] },
      }),
      413,
      'invalid_request_error',
    );
    await expectError(await api.req('/v1/summarize', { body: { text: long } }), 413, 'invalid_request_error');
    await expectError(await api.req('/v1/jobs', { body: { prompt: long } }), 413, 'invalid_request_error');
  });
});

describe('openapi.json', () => {
  it('is an OpenAPI 3.1 document of every endpoint whose $refs resolve', async () => {
    const res = await api.req('/openapi.json', { key: null });
    const doc = (await res.json()) as {
      openapi: string;
      info: { title: string };
      paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
      components: { schemas: Record<string, unknown>; securitySchemes: Record<string, unknown> };
    };
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.info.title).toBeTruthy();
    for (const [path, method] of [
      ['/v1/completions', 'post'],
      ['/v1/chat/completions', 'post'],
      ['/v1/models', 'get'],
      ['/v1/summarize', 'post'],
      ['/v1/jobs', 'post'],
      ['/v1/jobs/{id}', 'get'],
      ['/v1/jobs/{id}/stream', 'get'],
      ['/v1/jobs/{id}/cancel', 'post'],
      ['/v1/usage', 'get'],
      ['/healthz', 'get'],
      ['/readyz', 'get'],
      ['/metrics', 'get'],
    ]) {
      expect(doc.paths[path]?.[method], `${method} ${path}`).toBeDefined();
    }
    expect(Object.keys(doc.paths['/v1/completions'].post.responses)).toEqual(
      expect.arrayContaining(['200', '400', '401', '404', '413', '429', '503']),
    );
    expect(doc.components.securitySchemes.bearerAuth).toBeDefined();
    for (const name of ['CompletionRequest', 'ChatCompletionRequest', 'Job', 'Error', 'Usage']) {
      expect(doc.components.schemas[name], name).toBeDefined();
    }
    const refs = [...JSON.stringify(doc).matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map(
      (m) => m[1],
    );
    expect(refs.length).toBeGreaterThan(5);
    for (const r of refs) expect(doc.components.schemas[r], r).toBeDefined();
  });
});
