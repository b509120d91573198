/**
 * Faults with real processes: a worker killed by SIGKILL mid-job (BullMQ stalled-job recovery hands the
 * job to another worker, the client's stream ends correctly with no token duplicated), and a Redis
 * restart with AOF (API and worker reconnect; no admitted job is lost).
 */
import { keys, type StreamEvent, WORKER_STALE_MS } from '@ppsd/contract';
import { Engine } from '@ppsd/engine';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL, readSse, type Stack, sleep, startStack, usageOf, waitFor } from '../helpers/stack';

let stack: Stack;
let engine: Engine;
const auth = () => ({ Authorization: `Bearer ${stack.apiKey}`, 'Content-Type': 'application/json' });

beforeAll(async () => {
  // Two workers; a per-token pause keeps a job in flight long enough to kill its worker mid-stream.
  stack = await startStack({ workers: 2, workerEnv: { PPSD_FAULT_TOKEN_DELAY_MS: '15' } });
  engine = await Engine.open(stack.packageDir, { decoder: 'ar' });
  await waitFor('API ready', async () => (await fetch(`${stack.apiUrl}/readyz`)).ok, 30_000);
});

afterAll(async () => {
  await engine?.close();
  await stack?.stop();
});

describe('faults', () => {
  it('a worker killed mid-job: the job is picked up again and the stream ends without duplicates', async () => {
    const client = new OpenAI({
      baseURL: `${stack.apiUrl}/v1`,
      apiKey: stack.apiKey,
      maxRetries: 0,
      timeout: 90_000,
    });
    const params = { max_tokens: 60, temperature: 0.8, seed: 4242 };
    const stream = await client.completions.create({
      model: MODEL,
      prompt: 'Once upon a time',
      stream: true,
      stream_options: { include_usage: true },
      ...params,
    });
    let text = '';
    let killed: string | null = null;
    let usage: OpenAI.Completions.CompletionUsage | undefined;
    let finish: string | null | undefined;
    const notices: unknown[] = [];
    for await (const chunk of stream) {
      const ppsd = (chunk as { ppsd?: unknown }).ppsd;
      if (ppsd && 'retry' in (ppsd as object)) notices.push(ppsd); // (other ppsd fields: draft marks)
      text += chunk.choices[0]?.text ?? '';
      if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
      if (chunk.usage) usage = chunk.usage;
      if (!killed && text.length > 0) {
        // find the worker that owns the job and SIGKILL it
        const id = chunk.id;
        const evs = await stack.client.xrange(keys.jobEvents(id), '-', '+');
        const start = evs.map(([, f]) => JSON.parse(f[1]) as StreamEvent).find((e) => e.type === 'start');
        const owner = stack.workers.find(
          (w) => start?.type === 'start' && w.logs().some((l) => l.workerId === start.workerId),
        );
        expect(owner).toBeDefined();
        owner!.child.kill('SIGKILL');
        killed = id;
      }
    }
    expect(killed).not.toBeNull();
    const direct = await engine.generate('Once upon a time', {
      maxTokens: params.max_tokens,
      temperature: params.temperature,
      topP: 1,
      seed: params.seed,
      stop: [],
    });
    expect(text).toBe(direct.text);
    expect(finish).toBe(direct.finishReason === 'length' ? 'length' : 'stop');
    expect(usage?.completion_tokens).toBe(direct.completionTokens);
    const evs = (await stack.client.xrange(keys.jobEvents(killed!), '-', '+')).map(
      ([, f]) => JSON.parse(f[1]) as StreamEvent,
    );
    expect(evs.filter((e) => e.type === 'start').map((e) => e.attempt)).toEqual([1, 2]);
    // the stream said so, once, between the two attempts
    expect(evs.filter((e) => e.type === 'retry').map((e) => e.attempt)).toEqual([1]);
    const order = evs.map((e) => (e.type === 'start' ? `start${e.attempt}` : e.type));
    expect(order.indexOf('retry')).toBeLessThan(order.indexOf('start2'));
    expect(notices).toEqual([
      { retry: { attempt: 2, reason: 'the worker running this job stopped answering' } },
    ]);
    let next = 0;
    for (const e of evs) {
      if (e.type !== 'tokens') continue;
      expect(e.index).toBe(next);
      next += e.ids.length;
    }
    const records = await usageOf(stack.client, stack.tenant, killed!);
    expect(records.map((r) => [r.attempt, r.status])).toEqual([[2, 'completed']]);
    // bring the pool back to two workers for the next test
    await stack.startWorker();
  });

  it('/readyz turns 503 within a few seconds of the last worker dying', async () => {
    await waitFor('two ready workers', async () => (await fetch(`${stack.apiUrl}/readyz`)).ok, 60_000);
    for (const w of stack.workers) w.child.kill('SIGKILL');
    const killedAt = Date.now();
    await waitFor('readyz 503', async () => (await fetch(`${stack.apiUrl}/readyz`)).status === 503, 20_000);
    // WORKER_STALE_MS after the last heartbeat, plus the probe interval; not the 15 s it used to be
    expect(Date.now() - killedAt).toBeLessThan(WORKER_STALE_MS + 3_000);
    await stack.startWorker();
    await stack.startWorker();
    await waitFor('workers back', async () => (await fetch(`${stack.apiUrl}/readyz`)).ok, 60_000);
  });

  it('Redis restarts (AOF): API and workers reconnect and no admitted job is lost', async () => {
    const prompts = ['Once upon a time', 'The little dog', 'Tom and Sue', 'One day'];
    const ids: string[] = [];
    for (const [i, prompt] of prompts.entries()) {
      const res = await fetch(`${stack.apiUrl}/v1/jobs`, {
        method: 'POST',
        headers: auth(),
        body: JSON.stringify({ model: MODEL, prompt, max_tokens: 40, temperature: 0.5, seed: 100 + i }),
      });
      expect(res.status).toBe(202);
      ids.push(((await res.json()) as { id: string }).id);
    }
    // some jobs are running, some waiting: restart Redis under them
    await sleep(150);
    await stack.redis.restart();

    const views = await waitFor(
      'all admitted jobs to complete after the restart',
      async () => {
        const out: { status: string; text: string }[] = [];
        for (const id of ids) {
          const res = await fetch(`${stack.apiUrl}/v1/jobs/${id}`, { headers: auth() }).catch(() => null);
          if (!res?.ok) return undefined;
          const v = (await res.json()) as { status: string; text: string };
          if (v.status !== 'completed') return undefined;
          out.push(v);
        }
        return out;
      },
      90_000,
      250,
    );
    for (const [i, prompt] of prompts.entries()) {
      const direct = await engine.generate(prompt, {
        maxTokens: 40,
        temperature: 0.5,
        topP: 1,
        seed: 100 + i,
        stop: [],
      });
      expect(views[i].text).toBe(direct.text);
      // the replayable stream holds every token exactly once
      const r = await readSse(`${stack.apiUrl}/v1/jobs/${ids[i]}/stream`, { headers: auth() });
      const evs = r.messages.map((m) => JSON.parse(m.data) as StreamEvent);
      let next = 0;
      let text = '';
      for (const e of evs) {
        if (e.type !== 'tokens') continue;
        expect(e.index).toBe(next);
        next += e.ids.length;
        text += e.text;
      }
      expect(text).toBe(direct.text);
    }
    await waitFor(
      'API ready after the restart',
      async () => (await fetch(`${stack.apiUrl}/readyz`)).ok,
      30_000,
    );
    const after = await fetch(`${stack.apiUrl}/v1/completions`, {
      method: 'POST',
      headers: auth(),
      body: JSON.stringify({ model: MODEL, prompt: 'After the restart', max_tokens: 5, temperature: 0 }),
    });
    expect(after.status).toBe(200);
  });
});
