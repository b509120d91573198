/**
 * End to end through the real API (apps/api/src/server.ts) with the official `openai` client: Redis,
 * s3rver, the stories260K package and a worker process, all real. Streamed chat text equals the
 * engine's direct output; usage arrives in the last chunk; `[DONE]` ends the stream; a dropped job stream
 * resumes with Last-Event-ID with exactly the missing events; cancel stops a running job and its usage
 * record says so.
 */
import { type ChatMessage, renderChatPrompt, type StreamEvent } from '@ppsd/contract';
import { Engine } from '@ppsd/engine';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL, readSse, type SseMessage, type Stack, startStack, waitFor } from '../helpers/stack';

let stack: Stack;
let engine: Engine;
let client: OpenAI;
const auth = () => ({ Authorization: `Bearer ${stack.apiKey}`, 'Content-Type': 'application/json' });

beforeAll(async () => {
  // A small per-token pause on the worker keeps jobs running long enough to drop or cancel them mid-stream.
  stack = await startStack({ workers: 1, workerEnv: { PPSD_FAULT_TOKEN_DELAY_MS: '3' } });
  engine = await Engine.open(stack.packageDir, { decoder: 'ar' });
  client = new OpenAI({
    baseURL: `${stack.apiUrl}/v1`,
    apiKey: stack.apiKey,
    maxRetries: 0,
    timeout: 60_000,
  });
  await waitFor('API ready', async () => (await fetch(`${stack.apiUrl}/readyz`)).ok, 30_000);
});

afterAll(async () => {
  await engine?.close();
  await stack?.stop();
});

describe('OpenAI-compatible streaming', () => {
  const messages: ChatMessage[] = [
    { role: 'system', content: 'A short story.' },
    { role: 'user', content: 'Once upon a time, there was a little cat' },
  ];

  it('streams chat text equal to the engine direct output, usage in the last chunk', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 24,
      temperature: 0,
    });
    let text = '';
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of stream) {
      chunks.push(chunk);
      text += chunk.choices[0]?.delta?.content ?? '';
    }
    const direct = await engine.generate(renderChatPrompt(messages), {
      maxTokens: 24,
      temperature: 0,
      topP: 1,
      seed: 0,
      stop: [],
    });
    expect(text).toBe(direct.text);
    const last = chunks[chunks.length - 1];
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({
      prompt_tokens: direct.promptTokens,
      completion_tokens: direct.completionTokens,
      total_tokens: direct.promptTokens + direct.completionTokens,
    });
    const finish = chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
    expect(finish).toEqual([direct.finishReason === 'length' ? 'length' : 'stop']);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  });

  it('ends the raw SSE stream with data: [DONE]', async () => {
    const r = await readSse(`${stack.apiUrl}/v1/completions`, {
      method: 'POST',
      headers: auth(),
      body: JSON.stringify({
        model: MODEL,
        prompt: 'The dog',
        max_tokens: 8,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/text\/event-stream/);
    expect(r.messages[r.messages.length - 1].data).toBe('[DONE]');
    const usageChunk = JSON.parse(r.messages[r.messages.length - 2].data);
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage.completion_tokens).toBeGreaterThan(0);
    const direct = await engine.generate('The dog', {
      maxTokens: 8,
      temperature: 0,
      topP: 1,
      seed: 0,
      stop: [],
    });
    const text = r.messages
      .slice(0, -2)
      .map((m) => JSON.parse(m.data).choices[0]?.text ?? '')
      .join('');
    expect(text).toBe(direct.text);
  });

  it('non-stream completion returns the same text with usage', async () => {
    const res = await client.completions.create({
      model: MODEL,
      prompt: 'The dog',
      max_tokens: 8,
      temperature: 0,
    });
    const direct = await engine.generate('The dog', {
      maxTokens: 8,
      temperature: 0,
      topP: 1,
      seed: 0,
      stop: [],
    });
    expect(res.choices[0].text).toBe(direct.text);
    expect(res.usage?.completion_tokens).toBe(direct.completionTokens);
  });
});

describe('jobs', () => {
  async function createJob(body: Record<string, unknown>): Promise<string> {
    const res = await fetch(`${stack.apiUrl}/v1/jobs`, {
      method: 'POST',
      headers: auth(),
      body: JSON.stringify({ model: MODEL, ...body }),
    });
    expect(res.status).toBe(202);
    return ((await res.json()) as { id: string }).id;
  }

  it('resumes a dropped stream with Last-Event-ID: exactly the missing events', async () => {
    const id = await createJob({ prompt: 'Once upon a time', max_tokens: 120, temperature: 0.7, seed: 42 });
    const ac = new AbortController();
    const before: SseMessage[] = [];
    await readSse(`${stack.apiUrl}/v1/jobs/${id}/stream`, {
      headers: auth(),
      signal: ac.signal,
      onMessage: (m) => {
        before.push(m);
        if (before.length === 6) ac.abort(); // drop the connection mid-stream
      },
    });
    expect(before).toHaveLength(6);
    const lastSeen = before[before.length - 1].id!;
    const after = await readSse(`${stack.apiUrl}/v1/jobs/${id}/stream`, {
      headers: { ...auth(), 'Last-Event-ID': lastSeen },
    });
    expect(after.status).toBe(200);
    const full = await readSse(`${stack.apiUrl}/v1/jobs/${id}/stream`, { headers: auth() });
    const ids = (ms: SseMessage[]) => ms.map((m) => m.id);
    expect([...ids(before), ...ids(after.messages)]).toEqual(ids(full.messages));
    const events = full.messages.map((m) => JSON.parse(m.data) as StreamEvent);
    expect(events[events.length - 1].type).toBe('done');
    // ?starting_after= is the same cursor
    const viaQuery = await readSse(`${stack.apiUrl}/v1/jobs/${id}/stream?starting_after=${lastSeen}`, {
      headers: auth(),
    });
    expect(ids(viaQuery.messages)).toEqual(ids(after.messages));
    const direct = await engine.generate('Once upon a time', {
      maxTokens: 120,
      temperature: 0.7,
      topP: 1,
      seed: 42,
      stop: [],
    });
    const text = events.map((e) => (e.type === 'tokens' ? e.text : '')).join('');
    expect(text).toBe(direct.text);
  });

  it('cancel stops a running job; the usage record says cancelled', async () => {
    const id = await createJob({ prompt: 'Once upon a time', max_tokens: 400, temperature: 1, seed: 3 });
    const got: StreamEvent[] = [];
    let cancelled: Promise<Response> | null = null;
    await readSse(`${stack.apiUrl}/v1/jobs/${id}/stream`, {
      headers: auth(),
      onMessage: (m) => {
        const ev = JSON.parse(m.data) as StreamEvent;
        got.push(ev);
        if (ev.type === 'tokens' && !cancelled)
          cancelled = fetch(`${stack.apiUrl}/v1/jobs/${id}/cancel`, { method: 'POST', headers: auth() });
      },
    });
    expect(cancelled).not.toBeNull();
    expect((await cancelled!).status).toBe(200);
    const last = got[got.length - 1];
    const finish =
      last.type === 'done' ? last.result.finishReason : last.type === 'error' ? last.finishReason : null;
    expect(finish).toBe('cancelled');
    const tokens = got.reduce((n, e) => n + (e.type === 'tokens' ? e.ids.length : 0), 0);
    expect(tokens).toBeLessThan(400);
    const view = (await (await fetch(`${stack.apiUrl}/v1/jobs/${id}`, { headers: auth() })).json()) as {
      status: string;
    };
    expect(view.status).toBe('cancelled');
    const usage = await waitFor('usage record', async () => {
      const u = (await (await fetch(`${stack.apiUrl}/v1/usage`, { headers: auth() })).json()) as {
        data: {
          jobId?: string;
          job_id?: string;
          status: string;
          completionTokens?: number;
          completion_tokens?: number;
        }[];
      };
      const recs = u.data.filter((r) => (r.jobId ?? r.job_id) === id);
      return recs.length ? recs : undefined;
    });
    expect(usage).toHaveLength(1);
    expect(usage[0].status).toBe('cancelled');
    expect(usage[0].completionTokens ?? usage[0].completion_tokens).toBe(tokens);
  });
});
