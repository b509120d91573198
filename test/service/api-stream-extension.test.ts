/**
 * The `ppsd` extension of OpenAI stream chunks: per-token draft marks on text chunks and the speculation
 * summary with tokens/s on the finish chunk, from the worker's events; the official client ignores it.
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
import { KEY_A, MODEL, parseSse, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;
let worker: Worker;
let workerRedis: Redis;
let http: ReturnType<typeof serve>;

const STEPS: StreamEvent[] = [
  {
    type: 'tokens',
    attempt: 1,
    index: 0,
    ids: [1, 2, 3],
    text: ' there was a',
    segments: [
      { text: ' there', draft: true },
      { text: ' was', draft: true },
      { text: ' a', draft: false },
    ],
  },
  {
    type: 'tokens',
    attempt: 1,
    index: 3,
    ids: [4],
    text: ' cat',
    segments: [{ text: ' cat', draft: false }],
  },
];

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url);
  http = serve({ fetch: api.app.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise<void>((r) => (http.listening ? r() : http.once('listening', () => r())));
  workerRedis = new Redis(server.url, { maxRetriesPerRequest: null });
  worker = new Worker<GenerationJob>(
    queueName(MODEL),
    async (job) => {
      const d = job.data;
      await api.emit(d.id, { type: 'start', attempt: 1, workerId: 'fake', decoder: 'eesd', queuedMs: 0 });
      await new Promise((r) => setTimeout(r, 50));
      for (const ev of STEPS) await api.emit(d.id, ev);
      await api.emit(d.id, {
        type: 'done',
        attempt: 1,
        result: {
          text: ' there was a cat',
          finishReason: 'length',
          usage: { prompt_tokens: d.promptTokens, completion_tokens: 4, total_tokens: d.promptTokens + 4 },
          speculation: {
            decoder: 'eesd',
            draftsProposed: 3,
            draftsAccepted: 2,
            acceptanceRate: 2 / 3,
            meanAcceptedLength: 2,
          },
        },
      });
      await releaseReservation(api.redis, d.tenant, d.id);
    },
    { connection: workerRedis, prefix: QUEUE_PREFIX },
  );
});
afterAll(async () => {
  await worker?.close();
  workerRedis?.disconnect();
  http?.close();
  await api?.close();
  await server?.stop();
});

describe('stream extension', () => {
  for (const chat of [false, true]) {
    it(`${chat ? 'chat' : 'completion'} chunks carry draft marks and the final speculation summary`, async () => {
      const body = chat
        ? { model: MODEL, messages: [{ role: 'user', content: 'Once' }], max_tokens: 4, stream: true }
        : { model: MODEL, prompt: 'Once', max_tokens: 4, stream: true };
      const res = await api.req(chat ? '/v1/chat/completions' : '/v1/completions', { body });
      const chunks = parseSse(await res.text())
        .filter((e) => e.data !== '[DONE]')
        .map((e) => JSON.parse(e.data));
      const text = chunks.filter((c) => c.ppsd?.segments);
      expect(text.map((c) => c.ppsd.segments)).toEqual(STEPS.map((s) => s.type === 'tokens' && s.segments));
      for (const c of text) {
        const content = chat ? c.choices[0].delta.content : c.choices[0].text;
        expect(c.ppsd.segments.map((s: { text: string }) => s.text).join('')).toBe(content);
      }
      const fin = chunks.at(-1);
      expect(fin.choices[0].finish_reason).toBe('length');
      expect(fin.ppsd).toMatchObject({
        decoder: 'eesd',
        draft_tokens_proposed: 3,
        draft_tokens_accepted: 2,
        acceptance_rate: 2 / 3,
        mean_accepted_length: 2,
        completion_tokens: 4,
      });
      expect(fin.ppsd.tokens_per_second).toBeGreaterThan(0);
      expect(fin.ppsd.tokens_per_second).toBeLessThan(4 / 0.05 + 1); // >= 50 ms between start and done
    });
  }

  it('the official client streams the same text and ignores the field', async () => {
    const port = (http.address() as AddressInfo).port;
    const client = new OpenAI({ apiKey: KEY_A, baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 });
    const stream = await client.completions.create({
      model: MODEL,
      prompt: 'Once',
      max_tokens: 4,
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe(' there was a cat');
  });
});
