/**
 * The official `openai` client against the API served by @hono/node-server, with a stand-in worker (a
 * BullMQ consumer that writes the contract's events into the job stream like the real worker does):
 * completions, chat and summarize, streamed (with include_usage) and not, models; many concurrent
 * streams on one subscriber connection.
 */
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import {
  type GenerationJob,
  QUEUE_PREFIX,
  queueName,
  releaseReservation,
  type StreamEvent,
} from '@ppsd/contract';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { doneEvent, KEY_A, MODEL, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;
let http: ReturnType<typeof serve>;
let worker: Worker;
let client: OpenAI;
let workerRedis: Redis;

const WORDS = [' there', ' was', ' a', ' little', ' cat', '.'];

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url, { tenantMaxJobs: 200 });
  http = serve({ fetch: api.app.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise<void>((r) => (http.listening ? r() : http.once('listening', () => r())));
  const port = (http.address() as AddressInfo).port;
  client = new OpenAI({ apiKey: KEY_A, baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 });
  workerRedis = new Redis(server.url, { maxRetriesPerRequest: null });
  workerRedis.on('error', () => {});
  worker = new Worker<GenerationJob>(
    queueName(MODEL),
    async (job) => {
      const d = job.data;
      const emit = (ev: StreamEvent) => api.emit(d.id, ev);
      await emit({
        type: 'start',
        attempt: 1,
        workerId: 'fake',
        decoder: 'ar',
        queuedMs: Date.now() - d.enqueuedAt,
      });
      const n = Math.min(d.params.maxTokens, WORDS.length);
      for (let i = 0; i < n; i++)
        await emit({ type: 'tokens', attempt: 1, index: i, ids: [i + 10], text: WORDS[i] });
      const ev = doneEvent(WORDS.slice(0, n).join(''), n, d.promptTokens);
      if (ev.type === 'done' && n < WORDS.length) ev.result.finishReason = 'length';
      await emit(ev);
      await releaseReservation(api.redis, d.tenant, d.id);
    },
    { connection: workerRedis, prefix: QUEUE_PREFIX, concurrency: 50 },
  );
});
afterAll(async () => {
  await worker?.close();
  workerRedis?.disconnect();
  http?.close();
  await api?.close();
  await server?.stop();
});

describe('openai client', () => {
  it('lists models', async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual([MODEL]);
    expect((await client.models.retrieve(MODEL)).id).toBe(MODEL);
    // ppsd extension: how the package stores its weights
    expect((list.data[0] as unknown as { dtype: string }).dtype).toBe('f32');
  });

  it('completions, non-stream and stream with include_usage', async () => {
    const prompt = 'Once upon a time';
    const p = await api.model.countPromptTokens(prompt);
    const c = await client.completions.create({ model: MODEL, prompt, max_tokens: 4, temperature: 0 });
    expect(c.object).toBe('text_completion');
    expect(c.choices[0].text).toBe(' there was a little');
    expect(c.choices[0].finish_reason).toBe('length');
    expect(c.usage).toEqual({ prompt_tokens: p, completion_tokens: 4, total_tokens: p + 4 });

    const stream = await client.completions.create({
      model: MODEL,
      prompt,
      max_tokens: 16,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const chunks = [];
    for await (const chunk of stream) {
      chunks.push(chunk);
      text += chunk.choices[0]?.text ?? '';
    }
    expect(text).toBe(WORDS.join(''));
    expect(chunks.at(-2)?.choices[0].finish_reason).toBe('stop');
    expect(chunks.at(-1)?.choices).toEqual([]);
    expect(chunks.at(-1)?.usage).toEqual({ prompt_tokens: p, completion_tokens: 6, total_tokens: p + 6 });
    expect(chunks.slice(0, -1).every((ch) => ch.usage === null)).toBe(true);
  });

  it('chat, non-stream and stream', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me a story' }];
    const c = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 2 });
    expect(c.object).toBe('chat.completion');
    expect(c.choices[0].message).toMatchObject({ role: 'assistant', content: ' there was' });
    expect(c.usage?.completion_tokens).toBe(2);

    const stream = await client.chat.completions.create({ model: MODEL, messages, stream: true });
    let text = '';
    let role: string | undefined;
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      role ??= chunk.choices[0]?.delta.role;
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(role).toBe('assistant');
    expect(text).toBe(WORDS.join(''));
    expect(finish).toBe('stop');
  });

  it('summarize answers like a completion', async () => {
    const res = await client.post('/summarize', {
      body: { text: 'A cat sat on a mat all day.', max_tokens: 3 },
    });
    expect(res).toMatchObject({ object: 'text_completion', choices: [{ text: ' there was a' }] });
  });

  it('errors come back as OpenAI API errors', async () => {
    await expect(client.completions.create({ model: 'nope', prompt: 'x' })).rejects.toMatchObject({
      status: 404,
      code: 'model_not_found',
    });
    const bad = new OpenAI({ apiKey: 'sk-wrong-key-000', baseURL: client.baseURL, maxRetries: 0 });
    await expect(bad.models.list()).rejects.toMatchObject({ status: 401 });
  });

  it('100 concurrent streams share one subscriber connection and all complete', async () => {
    const clients = async () =>
      String(await api.redis.call('CLIENT', 'LIST'))
        .split('\n')
        .filter(Boolean).length;
    const before = await clients();
    const runs = Array.from({ length: 100 }, async (_, i) => {
      const stream = await client.completions.create({ model: MODEL, prompt: `story ${i}`, stream: true });
      let text = '';
      for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
      return text;
    });
    const texts = await Promise.all(runs);
    expect(texts.every((t) => t === WORDS.join(''))).toBe(true);
    expect(await clients()).toBe(before);
    expect(api.app.ctx.events.subscribedCount()).toBe(0);
  });
});
