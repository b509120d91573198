/**
 * OpenAI options at the API: every field is honoured or refused. Fields this server cannot honour
 * (tools, response_format, suffix, ...) are a 400 naming the field with nothing enqueued; logit_bias,
 * the penalties, logprobs and the speculation settings reach the job payload; what the workers cannot
 * run (stages above their heartbeats' maxStages, a token id outside the vocabulary) is a 400 before
 * anything is enqueued. Logprobs from the job's token events come back in OpenAI's shapes, stream and
 * not, and the official `openai` client parses them (a stand-in worker writes the events).
 */
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import {
  type GenerationJob,
  keys,
  QUEUE_PREFIX,
  queueName,
  releaseReservation,
  type StreamEvent,
  type TokenLogprob,
  type WorkerHeartbeat,
} from '@ppsd/contract';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { jobMetaKey } from '../../apps/api/src/jobs';
import { doneEvent, KEY_A, MODEL, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url, { tenantMaxJobs: 100 });
});
afterAll(async () => {
  await api?.close();
  await server?.stop();
});

const post = (path: string, body: Record<string, unknown>) => api.req(path, { body });
const waiting = () => api.queue().getWaitingCount();
const completion = { model: MODEL, prompt: 'Once upon a time', max_tokens: 4 };
const chat = { model: MODEL, messages: [{ role: 'user' as const, content: 'Hi' }], max_tokens: 4 };

describe('refused options', () => {
  beforeEach(async () => {
    await api.queue().obliterate({ force: true });
  });

  const cases: [string, string, Record<string, unknown>, string][] = [
    ['chat', 'tools', { tools: [{ type: 'function', function: { name: 'f' } }] }, 'tools'],
    ['chat', 'tool_choice', { tool_choice: 'auto' }, 'tool_choice'],
    ['chat', 'functions', { functions: [{ name: 'f' }] }, 'functions'],
    ['chat', 'function_call', { function_call: { name: 'f' } }, 'function_call'],
    ['chat', 'parallel_tool_calls', { parallel_tool_calls: true }, 'parallel_tool_calls'],
    ['chat', 'response_format json', { response_format: { type: 'json_object' } }, 'response_format'],
    ['chat', 'audio', { audio: { voice: 'alloy', format: 'mp3' } }, 'audio'],
    ['chat', 'modalities audio', { modalities: ['text', 'audio'] }, 'modalities'],
    ['chat', 'prediction', { prediction: { type: 'content', content: 'x' } }, 'prediction'],
    ['chat', 'reasoning_effort', { reasoning_effort: 'low' }, 'reasoning_effort'],
    ['chat', 'web_search_options', { web_search_options: {} }, 'web_search_options'],
    ['chat', 'n > 1', { n: 2 }, 'n'],
    ['chat', 'top_logprobs without logprobs', { top_logprobs: 2 }, 'top_logprobs'],
    ['chat', 'top_logprobs above 20', { logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    ['completion', 'suffix', { suffix: ' the end' }, 'suffix'],
    ['completion', 'logprobs above 5', { logprobs: 6 }, 'logprobs'],
    ['completion', 'echo', { echo: true }, 'echo'],
    ['completion', 'best_of', { best_of: 3 }, 'best_of'],
    ['completion', 'presence_penalty out of range', { presence_penalty: 2.5 }, 'presence_penalty'],
    ['completion', 'logit_bias out of range', { logit_bias: { 5: 101 } }, 'logit_bias.5'],
    ['completion', 'logit_bias key not an id', { logit_bias: { x: 1 } }, 'logit_bias.x'],
    ['completion', 'logit_bias id outside the vocabulary', { logit_bias: { 512: 1 } }, 'logit_bias'],
    ['completion', 'stages for ar', { speculation: { decoder: 'ar', stages: 2 } }, 'speculation.stages'],
    ['completion', 'stages for eesd', { speculation: { decoder: 'eesd', stages: 2 } }, 'speculation.stages'],
    ['completion', 'stages 1', { speculation: { decoder: 'ppsd', stages: 1 } }, 'speculation.stages'],
    [
      'completion',
      'draftLength for ppsd',
      { speculation: { decoder: 'ppsd', draftLength: 3 } },
      'speculation.draftLength',
    ],
  ];

  it.each(cases)('%s %s: 400 naming %s, nothing enqueued', async (kind, _what, extra, param) => {
    const res = await post(kind === 'chat' ? '/v1/chat/completions' : '/v1/completions', {
      ...(kind === 'chat' ? chat : completion),
      ...extra,
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { param: string; message: string; type: string } };
    expect(body.error.type).toBe('invalid_request_error');
    expect(body.error.param).toBe(param);
    expect(body.error.message).toContain(param.split('.')[0]);
    expect(await waiting()).toBe(0);
  });

  it('the same rules on /v1/jobs and /v1/summarize', async () => {
    for (const [path, body, param] of [
      ['/v1/jobs', { prompt: 'x', logprobs: 21 }, 'logprobs'],
      ['/v1/jobs', { prompt: 'x', frequency_penalty: -3 }, 'frequency_penalty'],
      [
        '/v1/jobs',
        { prompt: 'x', speculation: { decoder: 'spd', draftLength: 2 } },
        'speculation.draftLength',
      ],
      ['/v1/summarize', { text: 'A long day.', logprobs: 9 }, 'logprobs'],
    ] as const) {
      const res = await post(path, body);
      expect(res.status, path).toBe(400);
      expect(((await res.json()) as { error: { param: string } }).error.param).toBe(param);
    }
    expect(await waiting()).toBe(0);
  });

  it('accepts values that ask for what the server does anyway, and user as metadata', async () => {
    const res = await post('/v1/chat/completions', {
      ...chat,
      tools: [],
      tool_choice: 'none',
      response_format: { type: 'text' },
      modalities: ['text'],
      user: 'end-user-42',
      metadata: { team: 'a' },
      store: false,
      stream: true,
    });
    expect(res.status).toBe(200);
    await res.body?.cancel();
    const [job] = await api.queue().getWaiting();
    const meta = JSON.parse((await api.redis.get(jobMetaKey(job.id!)))!) as { user?: string };
    expect(meta.user).toBe('end-user-42');
  });
});

describe('options reach the job payload', () => {
  beforeEach(async () => {
    await api.queue().obliterate({ force: true });
    await api.redis.del(keys.workers(MODEL));
  });

  const lastJob = async () => (await api.queue().getWaiting())[0].data as GenerationJob;

  it('logit_bias, penalties and logprobs (completion count, chat top_logprobs)', async () => {
    const res = await post('/v1/jobs', {
      prompt: 'Once upon a time',
      logit_bias: { 13: -100, 400: 2.5 },
      presence_penalty: 0.5,
      frequency_penalty: -0.25,
      logprobs: 7,
      speculation: { decoder: 'eesd', draftLength: 3 },
    });
    expect(res.status).toBe(202);
    const job = await lastJob();
    expect(job.params).toMatchObject({
      logitBias: { 13: -100, 400: 2.5 },
      presencePenalty: 0.5,
      frequencyPenalty: -0.25,
      logprobs: 7,
    });
    expect(job.speculation).toEqual({ decoder: 'eesd', draftLength: 3 });

    await api.queue().obliterate({ force: true });
    const c = await post('/v1/chat/completions', { ...chat, logprobs: true, top_logprobs: 4, stream: true });
    await c.body?.cancel();
    expect((await lastJob()).params.logprobs).toBe(4);
    await api.queue().obliterate({ force: true });
    const d = await post('/v1/chat/completions', { ...chat, logprobs: false, stream: true });
    await d.body?.cancel();
    expect((await lastJob()).params.logprobs).toBeUndefined();
  });

  const heartbeat = (maxStages: number, over: Partial<WorkerHeartbeat> = {}): string =>
    JSON.stringify({
      workerId: 'w1',
      modelId: MODEL,
      ready: true,
      decoders: ['ar', 'ppsd'],
      devices: ['cpu', 'cpu'],
      maxStages,
      busy: 0,
      at: Date.now(),
      ...over,
    } satisfies WorkerHeartbeat);

  it("speculation.stages above every ready worker's maxStages is a 400; within it, enqueued", async () => {
    await api.redis.hset(keys.workers(MODEL), 'w1', heartbeat(2), 'w2', heartbeat(4, { workerId: 'w2' }));
    const over = await post('/v1/jobs', { prompt: 'x', speculation: { decoder: 'ppsd', stages: 5 } });
    expect(over.status).toBe(400);
    const err = ((await over.json()) as { error: { param: string; message: string } }).error;
    expect(err.param).toBe('speculation.stages');
    expect(err.message).toMatch(/at most 4 stages/);
    expect(await waiting()).toBe(0);
    const ok = await post('/v1/jobs', { prompt: 'x', speculation: { decoder: 'spd', stages: 4 } });
    expect(ok.status).toBe(202);
    expect((await lastJob()).speculation).toEqual({ decoder: 'spd', stages: 4 });
  });

  it('a stale or not-ready worker does not count; with none, the worker that takes the job decides', async () => {
    await api.redis.hset(
      keys.workers(MODEL),
      'old',
      heartbeat(8, { workerId: 'old', at: Date.now() - 60_000 }),
      'warming',
      heartbeat(8, { workerId: 'warming', ready: false }),
      'w1',
      heartbeat(2),
    );
    expect(
      (await post('/v1/jobs', { prompt: 'x', speculation: { decoder: 'ppsd', stages: 3 } })).status,
    ).toBe(400);
    await api.redis.del(keys.workers(MODEL));
    expect(
      (await post('/v1/jobs', { prompt: 'x', speculation: { decoder: 'ppsd', stages: 3 } })).status,
    ).toBe(202);
  });
});

describe('logprobs in OpenAI shapes through the official client', () => {
  let http: ReturnType<typeof serve>;
  let worker: Worker;
  let workerRedis: Redis;
  let client: OpenAI;

  const lp = (token: string, logprob: number, offset: number, top: [string, number][]): TokenLogprob => ({
    token,
    bytes: Array.from(new TextEncoder().encode(token)),
    logprob,
    offset,
    top: top.map(([t, l]) => ({ token: t, bytes: Array.from(new TextEncoder().encode(t)), logprob: l })),
  });
  const TOKENS = [
    lp(' there', -0.1, 0, [
      [' there', -0.1],
      [' a', -2.5],
    ]),
    lp(' was', -0.2, 6, [
      [' was', -0.2],
      [' is', -1.9],
    ]),
    lp(' a', -0.05, 10, [
      [' a', -0.05],
      [' one', -3],
    ]),
  ];
  const TEXT = TOKENS.map((t) => t.token).join('');

  beforeAll(async () => {
    http = serve({ fetch: api.app.fetch, port: 0, hostname: '127.0.0.1' });
    await new Promise<void>((r) => (http.listening ? r() : http.once('listening', () => r())));
    const port = (http.address() as AddressInfo).port;
    client = new OpenAI({ apiKey: KEY_A, baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 });
    workerRedis = new Redis(server.url, { maxRetriesPerRequest: null });
    workerRedis.on('error', () => {});
    // writes the tokens one event each, then repeats the last two as a retried attempt would (with
    // the first of them already published): the API must not duplicate them
    worker = new Worker<GenerationJob>(
      queueName(MODEL),
      async (job) => {
        const d = job.data;
        const n = d.params.logprobs;
        const top = (t: TokenLogprob) =>
          n === undefined ? {} : { logprobs: [{ ...t, top: t.top.slice(0, n) }] };
        const emit = (ev: StreamEvent) => api.emit(d.id, ev);
        await emit({ type: 'start', attempt: 1, workerId: 'fake', decoder: 'ar', queuedMs: 0 });
        for (const [i, t] of TOKENS.entries())
          await emit({ type: 'tokens', attempt: 1, index: i, ids: [100 + i], text: t.token, ...top(t) });
        const retried = TOKENS.slice(1).map((t) => ({ ...t, top: t.top.slice(0, n ?? 0) }));
        await emit({
          type: 'tokens',
          attempt: 2,
          index: 1,
          ids: [101, 102],
          text: '',
          ...(n === undefined ? {} : { logprobs: retried }),
        });
        await emit(doneEvent(TEXT, TOKENS.length, d.promptTokens, 2));
        await releaseReservation(api.redis, d.tenant, d.id);
      },
      { connection: workerRedis, prefix: QUEUE_PREFIX },
    );
    worker.on('error', () => {});
  });

  afterAll(async () => {
    await worker?.close();
    workerRedis?.disconnect();
    await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
  });

  it('completions: tokens, token_logprobs, top_logprobs (with the sampled token), text_offset', async () => {
    const r = await client.completions.create({ ...completion, logprobs: 1 });
    expect(r.choices[0].text).toBe(TEXT);
    expect(r.choices[0].logprobs).toEqual({
      tokens: [' there', ' was', ' a'],
      token_logprobs: [-0.1, -0.2, -0.05],
      top_logprobs: [{ ' there': -0.1 }, { ' was': -0.2 }, { ' a': -0.05 }],
      text_offset: [0, 6, 10],
    });
    const plain = await client.completions.create(completion);
    expect(plain.choices[0].logprobs).toBeNull();
  });

  it('completions stream: the same entries, chunk by chunk', async () => {
    const stream = await client.completions.create({ ...completion, logprobs: 2, stream: true });
    const tokens: string[] = [];
    const tops: Record<string, number>[] = [];
    for await (const chunk of stream) {
      const l = chunk.choices[0]?.logprobs;
      if (!l) continue;
      tokens.push(...(l.tokens ?? []));
      tops.push(...(l.top_logprobs ?? []));
    }
    expect(tokens).toEqual([' there', ' was', ' a']);
    expect(tops[1]).toEqual({ ' was': -0.2, ' is': -1.9 });
  });

  it('chat: content entries with bytes and top_logprobs, stream and not', async () => {
    const r = await client.chat.completions.create({ ...chat, logprobs: true, top_logprobs: 2 });
    const content = r.choices[0].logprobs?.content ?? [];
    expect(content.map((c) => c.token)).toEqual([' there', ' was', ' a']);
    expect(content[0]).toEqual({
      token: ' there',
      logprob: -0.1,
      bytes: [32, 116, 104, 101, 114, 101],
      top_logprobs: [
        { token: ' there', logprob: -0.1, bytes: [32, 116, 104, 101, 114, 101] },
        { token: ' a', logprob: -2.5, bytes: [32, 97] },
      ],
    });
    expect(r.choices[0].logprobs?.refusal).toBeNull();

    const stream = await client.chat.completions.create({
      ...chat,
      logprobs: true,
      top_logprobs: 2,
      stream: true,
    });
    const streamed: OpenAI.Chat.Completions.ChatCompletionTokenLogprob[] = [];
    for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
    expect(streamed).toEqual(content);

    const none = await client.chat.completions.create(chat);
    expect(none.choices[0].logprobs).toBeNull();
  });
});
