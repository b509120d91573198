/**
 * Load on loopback: 200 concurrent streaming chat requests from 4 tenants through the real API, queue and
 * worker; every client gets every token (text equal to the engine's direct output) and its usage chunk
 * and [DONE]. Then the tenant queue limit and the token quota answer 429 with Retry-After.
 */
import { type ChatMessage, keys, renderChatPrompt } from '@ppsd/contract';
import { Engine } from '@ppsd/engine';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testKey } from '../helpers/keys';
import { MODEL, readSse, type Stack, startStack, waitFor } from '../helpers/stack';

const TENANTS = ['t0', 't1', 't2', 't3'].map((t) => ({ tenant: t, key: testKey(`load${t}`) }));
const TINY = { tenant: 'tiny', key: testKey('loadtiny') };
const CLIENTS = 200;
const MAX_TOKENS = 6;
const PROMPTS = ['Once upon a time', 'The cat sat', 'Lily and Ben', 'One sunny day'];

let stack: Stack;
let engine: Engine;

beforeAll(async () => {
  stack = await startStack({
    workers: 1,
    keys: [...TENANTS, TINY],
    apiEnv: { PPSD_TENANT_MAX_JOBS: '60', PPSD_RETRY_AFTER_SECONDS: '3' },
  });
  engine = await Engine.open(stack.packageDir, { decoder: 'ar' });
  await waitFor('API ready', async () => (await fetch(`${stack.apiUrl}/readyz`)).ok, 30_000);
});

afterAll(async () => {
  await engine?.close();
  await stack?.stop();
});

const chatBody = (messages: ChatMessage[], maxTokens = MAX_TOKENS) =>
  JSON.stringify({
    model: MODEL,
    messages,
    max_tokens: maxTokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });

describe('load', () => {
  it(`${CLIENTS} concurrent streaming requests each receive every token`, async () => {
    const expected = new Map<string, { text: string; tokens: number }>();
    for (const p of PROMPTS) {
      const r = await engine.generate(renderChatPrompt([{ role: 'user', content: p }]), {
        maxTokens: MAX_TOKENS,
        temperature: 0,
        topP: 1,
        seed: 0,
        stop: [],
      });
      expected.set(p, { text: r.text, tokens: r.completionTokens });
    }
    const results = await Promise.all(
      Array.from({ length: CLIENTS }, async (_, i) => {
        const { key } = TENANTS[i % TENANTS.length];
        const prompt = PROMPTS[i % PROMPTS.length];
        const r = await readSse(`${stack.apiUrl}/v1/chat/completions`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
          body: chatBody([{ role: 'user', content: prompt }]),
          signal: AbortSignal.timeout(100_000),
        });
        let text = '';
        let usage: { completion_tokens: number } | undefined;
        for (const m of r.messages) {
          if (m.data === '[DONE]') continue;
          const chunk = JSON.parse(m.data);
          text += chunk.choices?.[0]?.delta?.content ?? '';
          if (chunk.usage) usage = chunk.usage;
        }
        return { prompt, status: r.status, text, usage, last: r.messages[r.messages.length - 1]?.data };
      }),
    );
    const bad = results.filter((r) => {
      const want = expected.get(r.prompt)!;
      return (
        r.status !== 200 ||
        r.last !== '[DONE]' ||
        r.text !== want.text ||
        r.usage?.completion_tokens !== want.tokens
      );
    });
    expect(bad.slice(0, 3)).toEqual([]);
    expect(results).toHaveLength(CLIENTS);
    const done = Number(await stack.client.hget(keys.metrics(MODEL), 'request_success_total'));
    expect(done).toBeGreaterThanOrEqual(CLIENTS);
  });

  it('the tenant queue limit answers 429 with Retry-After', async () => {
    const { tenant, key } = TENANTS[0];
    const fake = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`fake-${i}`, '1']));
    await stack.client.hset(keys.tenantReservations(tenant), fake);
    try {
      const res = await fetch(`${stack.apiUrl}/v1/chat/completions`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
        body: chatBody([{ role: 'user', content: 'Hi' }]),
      });
      expect(res.status).toBe(429);
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
      const body = (await res.json()) as { error: { type: string; message: string } };
      expect(body.error.message).toBeTruthy();
    } finally {
      await stack.client.hdel(keys.tenantReservations(tenant), ...Object.keys(fake));
    }
  });

  it('the token quota answers 429 with Retry-After', async () => {
    await stack.client.hset(keys.tenantQuota(TINY.tenant), 'limit', 20);
    const res = await fetch(`${stack.apiUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TINY.key}`, 'Content-Type': 'application/json' },
      body: chatBody([{ role: 'user', content: 'Once upon a time' }], 64),
    });
    expect(res.status).toBe(429);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
  });
});
