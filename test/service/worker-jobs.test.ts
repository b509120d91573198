/**
 * The GPU worker as a real child process on real Redis + s3rver + the stories260K package, driven
 * through its BullMQ queue exactly as the API drives it: streamed tokens equal the engine's direct
 * output, one usage record per attempt, quota settled, cancel within a step, unknown decoder refused,
 * SIGTERM drains the job in flight and exits 0.
 */
import { randomUUID } from 'node:crypto';
import { keys, progressKeys, type WorkerHeartbeat } from '@ppsd/contract';
import { Engine } from '@ppsd/engine';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  enqueue,
  MODEL,
  makeJob,
  readEvents,
  type Stack,
  startStack,
  streamedTokens,
  usageOf,
  waitFor,
  waitForEnd,
} from '../helpers/stack';

let stack: Stack;
let engine: Engine;

beforeAll(async () => {
  stack = await startStack({ api: false, workers: 1 });
  engine = await Engine.open(stack.packageDir, { decoder: 'ar' });
});

afterAll(async () => {
  await engine?.close();
  await stack?.stop();
});

describe('gpu worker', () => {
  it('is ready only after package, engine and warm-up, and advertises its decoders', async () => {
    const [hb] = await stack.readyWorkers();
    expect(hb).toMatchObject({ modelId: MODEL, ready: true, devices: ['cpu'] });
    expect(hb.decoders).toContain('ar');
    const lines = stack.workers[0].logs();
    // start-up lines are JSON log lines of the worker, each with its id
    for (const l of lines) expect(l).toMatchObject({ service: 'worker', workerId: hb.workerId });
    const order = ['verified and cached', 'engine open', 'warm-up generation', 'ready:'].map((s) =>
      lines.findIndex((l) => l.msg.includes(s)),
    );
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
  });

  it('streams the same tokens the engine produces directly, then done, usage and settlement', async () => {
    const id = randomUUID();
    const job = makeJob(id, { prompt: 'Once upon a time', maxTokens: 24, temperature: 0.8, seed: 1234 });
    await enqueue(stack.redis.url, job);
    const evs = await waitForEnd(stack.client, id);
    const direct = await engine.generate(job.prompt, { ...job.params, decoder: 'ar' });

    expect(evs[0].event).toMatchObject({ type: 'start', attempt: 1, decoder: 'ar' });
    const streamed = streamedTokens(evs);
    expect(streamed.text).toBe(direct.text);
    expect(streamed.ids).toEqual(direct.tokens);
    const last = evs[evs.length - 1].event;
    expect(last.type).toBe('done');
    if (last.type !== 'done') return;
    expect(last.result.text).toBe(direct.text);
    expect(last.result.finishReason).toBe(direct.finishReason);
    expect(last.result.usage).toEqual({
      prompt_tokens: direct.promptTokens,
      completion_tokens: direct.completionTokens,
      total_tokens: direct.promptTokens + direct.completionTokens,
    });

    const usage = await usageOf(stack.client, 'acme', id);
    expect(usage).toHaveLength(1);
    expect(usage[0]).toMatchObject({
      attempt: 1,
      status: 'completed',
      completionTokens: direct.completionTokens,
      decoder: 'ar',
      model: MODEL,
    });
    expect(await stack.client.hget(keys.tenantReservations('acme'), id)).toBeNull();
    const ttl = await stack.client.ttl(keys.jobEvents(id));
    expect(ttl).toBeGreaterThan(3600);
    expect(await stack.client.hget(progressKeys.jobProgress(id), 'done')).toBe('1');
    expect(
      Number(await stack.client.hget(keys.metrics(MODEL), 'generation_tokens_total')),
    ).toBeGreaterThanOrEqual(direct.completionTokens);
  });

  it('cancels a running job within a step; the usage record says cancelled', async () => {
    const id = randomUUID();
    const job = makeJob(id, { maxTokens: 400, temperature: 1, seed: 99 });
    await enqueue(stack.redis.url, job);
    await waitFor(
      'first tokens',
      async () => (await readEvents(stack.client, id)).some((e) => e.event.type === 'tokens'),
      30_000,
      2,
    );
    await stack.client
      .multi()
      .set(keys.jobCancelled(id), '1', 'EX', 600)
      .publish(keys.cancelChannel, id)
      .exec();
    const evs = await waitForEnd(stack.client, id);
    const last = evs[evs.length - 1].event;
    expect(last.type).toBe('done');
    if (last.type !== 'done') return;
    expect(last.result.finishReason).toBe('cancelled');
    const streamed = streamedTokens(evs);
    expect(last.result.usage.completion_tokens).toBe(streamed.ids.length);
    expect(streamed.ids.length).toBeLessThan(400);
    const [usage] = await usageOf(stack.client, 'acme', id);
    expect(usage).toMatchObject({
      status: 'cancelled',
      finishReason: 'cancelled',
      completionTokens: streamed.ids.length,
    });
    expect(await stack.client.hget(keys.tenantReservations('acme'), id)).toBeNull();
  });

  it('a job cancelled before it starts ends without generating', async () => {
    const id = randomUUID();
    await stack.client.set(keys.jobCancelled(id), '1', 'EX', 600);
    await enqueue(stack.redis.url, makeJob(id, { maxTokens: 50 }));
    const evs = await waitForEnd(stack.client, id);
    const last = evs[evs.length - 1].event;
    expect(last.type === 'done' && last.result.finishReason).toBe('cancelled');
    expect(streamedTokens(evs).ids).toHaveLength(0);
  });

  it('fails a job asking for a decoder the worker cannot run, with a clear error event', async () => {
    const id = randomUUID();
    await enqueue(stack.redis.url, makeJob(id, { speculation: { decoder: 'spd' } }));
    const evs = await waitForEnd(stack.client, id);
    const hb = (await stack.readyWorkers())[0] as WorkerHeartbeat;
    const last = evs[evs.length - 1].event;
    if (hb.decoders.includes('spd')) {
      expect(last.type).toBe('done');
      return;
    }
    expect(last).toMatchObject({ type: 'error', code: 'unsupported_decoder', finishReason: 'error' });
    if (last.type === 'error') expect(last.message).toMatch(/decoder 'spd' is not available/);
    const usage = await usageOf(stack.client, 'acme', id);
    expect(usage).toHaveLength(1);
    expect(usage[0].status).toBe('failed');
    expect(await stack.client.hget(keys.tenantReservations('acme'), id)).toBeNull();
  });

  it('drains on SIGTERM: the job in flight finishes, the worker exits 0 and leaves the pool', async () => {
    const id = randomUUID();
    await enqueue(stack.redis.url, makeJob(id, { maxTokens: 300, temperature: 1, seed: 5 }));
    await waitFor(
      'first tokens',
      async () => (await readEvents(stack.client, id)).some((e) => e.event.type === 'tokens'),
      30_000,
      2,
    );
    const w = stack.workers[0];
    w.child.kill('SIGTERM');
    const exit = await w.exited;
    expect(exit.code, w.output).toBe(0);
    const evs = await readEvents(stack.client, id);
    const last = evs[evs.length - 1].event;
    expect(last.type).toBe('done');
    if (last.type === 'done') expect(['length', 'stop']).toContain(last.result.finishReason);
    expect(w.logs().some((l) => /^SIGTERM: draining/.test(l.msg))).toBe(true);
    expect(
      await stack.client.hget(keys.workers(MODEL), (await stack.readyWorkers())[0]?.workerId ?? 'none'),
    ).toBeNull();
    expect(await stack.readyWorkers()).toHaveLength(0);
  });
  it('past the drain deadline hands the job back; another worker finishes it without duplicates', async () => {
    const slow = { PPSD_FAULT_TOKEN_DELAY_MS: '20', PPSD_DRAIN_TIMEOUT_MS: '300' };
    const w = await stack.startWorker({ env: slow });
    const id = randomUUID();
    const job = makeJob(id, { maxTokens: 120, temperature: 0.9, seed: 11 });
    await enqueue(stack.redis.url, job);
    await waitFor(
      'first tokens',
      async () => (await readEvents(stack.client, id)).some((e) => e.event.type === 'tokens'),
      30_000,
      2,
    );
    w.child.kill('SIGTERM');
    expect((await w.exited).code, w.output).toBe(0);
    expect(w.logs().some((l) => /handing 1 job\(s\) back/.test(l.msg))).toBe(true);
    const partial = await readEvents(stack.client, id);
    expect(partial.some((e) => e.event.type === 'done' || e.event.type === 'error')).toBe(false);
    await stack.startWorker();
    const evs = await waitForEnd(stack.client, id);
    const direct = await engine.generate(job.prompt, { ...job.params, decoder: 'ar' });
    const streamed = streamedTokens(evs);
    expect(streamed.ids).toEqual(direct.tokens);
    expect(streamed.text).toBe(direct.text);
    expect(evs.filter((e) => e.event.type === 'start').map((e) => e.event.attempt)).toEqual([1, 2]);
    const usage = await usageOf(stack.client, 'acme', id);
    expect(usage.map((u) => u.status)).toEqual(['failed', 'completed']);
  });
});
