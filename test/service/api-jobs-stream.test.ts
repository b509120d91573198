/**
 * The jobs resource against events XADDed into the real Redis stream exactly as a worker writes them:
 * status and text, SSE with ids, resume with Last-Event-ID / ?starting_after= (exactly the missed
 * events, nothing twice), live wake-ups, tenant isolation, /v1/usage.
 */
import { encodeUsage, keys, type StreamEvent, type UsageRecord } from '@ppsd/contract';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { doneEvent, KEY_B, parseSse, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';

let server: RedisServer;
let api: TestApi;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url);
});
afterAll(async () => {
  await api?.close();
  await server?.stop();
});

async function newJob(key?: string): Promise<string> {
  const res = await api.req('/v1/jobs', { body: { prompt: 'Once upon a time', max_tokens: 8 }, key });
  expect(res.status).toBe(202);
  return ((await res.json()) as { id: string }).id;
}

const tokens = (index: number, text: string, attempt = 1): StreamEvent => ({
  type: 'tokens',
  attempt,
  index,
  ids: [index + 100],
  text,
});

/** Reads an SSE response until it closes. */
async function readAll(res: Response): Promise<string> {
  return await res.text();
}

/** Reads SSE events until `n` data events arrived, then cancels the body (a client disconnecting). */
async function readEvents(res: Response, n: number): Promise<{ id?: string; data: string }[]> {
  const reader = res.body!.getReader();
  let text = '';
  for (;;) {
    const events = parseSse(text);
    if (events.length >= n && text.endsWith('\n\n')) {
      await reader.cancel();
      return events;
    }
    const { done, value } = await reader.read();
    if (done) return parseSse(text);
    text += new TextDecoder().decode(value);
  }
}

describe('jobs', () => {
  it('GET shows queued, then text so far, then the result with usage and speculation stats', async () => {
    const id = await newJob();
    const promptTokens = await api.model.countPromptTokens('Once upon a time');
    let view = (await (await api.req(`/v1/jobs/${id}`)).json()) as Record<string, unknown>;
    expect(view).toMatchObject({
      id,
      object: 'job',
      status: 'queued',
      text: '',
      finish_reason: null,
      last_event_id: null,
    });
    await api.emit(id, { type: 'start', attempt: 1, workerId: 'w1', decoder: 'ar', queuedMs: 3 });
    await api.emit(id, tokens(0, ' there'));
    await api.emit(id, tokens(1, ' was'));
    view = (await (await api.req(`/v1/jobs/${id}`)).json()) as Record<string, unknown>;
    expect(view).toMatchObject({
      text: ' there was',
      usage: { completion_tokens: 2, prompt_tokens: promptTokens },
    });
    const last = await api.emit(id, doneEvent(' there was', 2, promptTokens));
    view = (await (await api.req(`/v1/jobs/${id}`)).json()) as Record<string, unknown>;
    expect(view).toMatchObject({
      status: 'completed',
      text: ' there was',
      finish_reason: 'stop',
      attempt: 1,
      last_event_id: last,
      usage: { prompt_tokens: promptTokens, completion_tokens: 2, total_tokens: promptTokens + 2 },
      speculation: { decoder: 'ar' },
      error: null,
    });
  });

  it('a failed job shows its error', async () => {
    const id = await newJob();
    await api.emit(id, {
      type: 'error',
      attempt: 3,
      message: 'boom',
      code: 'engine_error',
      finishReason: 'error',
    });
    const view = (await (await api.req(`/v1/jobs/${id}`)).json()) as Record<string, unknown>;
    expect(view).toMatchObject({
      status: 'failed',
      error: { message: 'boom', code: 'engine_error' },
      attempt: 3,
    });
  });
});

describe('jobs SSE', () => {
  it('every event has the stream entry id; resuming replays exactly the missed events', async () => {
    const id = await newJob();
    const ids: string[] = [];
    ids.push(await api.emit(id, { type: 'start', attempt: 1, workerId: 'w1', decoder: 'ar', queuedMs: 1 }));
    for (let i = 0; i < 4; i++) ids.push(await api.emit(id, tokens(i, `t${i}`)));

    // first connection: reads 3 events, then the client drops
    const first = await readEvents(await api.req(`/v1/jobs/${id}/stream`), 3);
    expect(first.slice(0, 3).map((e) => e.id)).toEqual(ids.slice(0, 3));
    expect(JSON.parse(first[0].data)).toMatchObject({ type: 'start', workerId: 'w1' });

    // more events while disconnected, including the end
    for (let i = 4; i < 6; i++) ids.push(await api.emit(id, tokens(i, `t${i}`)));
    ids.push(await api.emit(id, doneEvent('t0t1t2t3t4t5', 6, 5)));

    const resumed = parseSse(
      await readAll(await api.req(`/v1/jobs/${id}/stream`, { headers: { 'Last-Event-ID': first[2].id! } })),
    );
    expect(resumed.map((e) => e.id)).toEqual(ids.slice(3));
    expect(resumed.map((e) => JSON.parse(e.data).type)).toEqual([
      'tokens',
      'tokens',
      'tokens',
      'tokens',
      'done',
    ]);

    const viaQuery = parseSse(await readAll(await api.req(`/v1/jobs/${id}/stream?starting_after=${ids[4]}`)));
    expect(viaQuery.map((e) => e.id)).toEqual(ids.slice(5));

    const all = parseSse(await readAll(await api.req(`/v1/jobs/${id}/stream`)));
    expect(all.map((e) => e.id)).toEqual(ids);
    expect(new Set(all.map((e) => e.id)).size).toBe(all.length);

    // reconnecting after the end: 204, so EventSource stops retrying
    const after = await api.req(`/v1/jobs/${id}/stream`, { headers: { 'Last-Event-ID': ids.at(-1)! } });
    expect(after.status).toBe(204);
  });

  it('a live stream is woken by the worker publish and ends after the terminal event', async () => {
    const id = await newJob();
    const res = await api.req(`/v1/jobs/${id}/stream`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const body = readAll(res);
    await new Promise((r) => setTimeout(r, 50));
    const ids = [await api.emit(id, tokens(0, 'a')), await api.emit(id, tokens(1, 'b'))];
    ids.push(await api.emit(id, doneEvent('ab', 2, 5)));
    const events = parseSse(await body);
    expect(events.map((e) => e.id)).toEqual(ids);
    expect(api.app.ctx.events.subscribedCount()).toBe(0);
  });

  it('a malformed cursor is a 400', async () => {
    const id = await newJob();
    const res = await api.req(`/v1/jobs/${id}/stream`, { headers: { 'Last-Event-ID': 'abc' } });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { param: string } }).error.param).toBe('starting_after');
  });
});

describe('isolation', () => {
  it("tenant B gets 404 for A's job, its stream, its cancel, and never sees A's usage", async () => {
    const id = await newJob();
    await api.emit(id, tokens(0, 'secret'));
    const mine = await api.req(`/v1/jobs/${id}`);
    expect(mine.status).toBe(200);
    for (const [path, method] of [
      [`/v1/jobs/${id}`, 'GET'],
      [`/v1/jobs/${id}/stream`, 'GET'],
      [`/v1/jobs/${id}/cancel`, 'POST'],
    ]) {
      const res = await api.req(path, { key: KEY_B, method });
      expect(res.status, path).toBe(404);
      const body = (await res.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe('job_not_found');
      // indistinguishable from a job that does not exist
      const missing = (await (
        await api.req(path.replace(id, 'job_missing000000'), { key: KEY_B, method })
      ).json()) as {
        error: { message: string };
      };
      expect(body.error.message.replace(id, 'X')).toBe(
        missing.error.message.replace('job_missing000000', 'X'),
      );
    }
    expect(await api.redis.exists(keys.jobCancelled(id))).toBe(0);
  });
});

describe('/v1/usage', () => {
  it("returns the calling tenant's records in [from, to], per job and totals", async () => {
    const rec = (tenant: string, jobId: string, attempt: number, completion: number): UsageRecord => ({
      tenant,
      jobId,
      attempt,
      model: 'stories260K',
      status: 'completed',
      finishReason: 'stop',
      promptTokens: 4,
      completionTokens: completion,
      draftTokensProposed: 10,
      draftTokensAccepted: 6,
      decoder: 'ppsd',
      wallMs: 100,
      deviceSeconds: 0.2,
      endedAt: 0,
    });
    const t0 = Date.now();
    await api.redis.xadd(keys.tenantUsage('acme'), `${t0}-0`, ...encodeUsage(rec('acme', 'job_u1', 1, 3)));
    await api.redis.xadd(keys.tenantUsage('acme'), `${t0}-1`, ...encodeUsage(rec('acme', 'job_u1', 2, 5)));
    await api.redis.xadd(
      keys.tenantUsage('acme'),
      `${t0 + 5000}-0`,
      ...encodeUsage(rec('acme', 'job_u2', 1, 7)),
    );
    await api.redis.xadd(
      keys.tenantUsage('globex'),
      `${t0}-0`,
      ...encodeUsage(rec('globex', 'job_g', 1, 100)),
    );

    const all = (await (await api.req(`/v1/usage?from=${t0}&to=${t0 + 10_000}`)).json()) as {
      data: UsageRecord[];
      jobs: { job_id: string; attempts: number; completion_tokens: number }[];
      totals: Record<string, number>;
      tenant: string;
    };
    expect(all.tenant).toBe('acme');
    expect(all.data.map((r) => [r.jobId, r.attempt])).toEqual([
      ['job_u1', 1],
      ['job_u1', 2],
      ['job_u2', 1],
    ]);
    expect(all.jobs).toEqual([
      expect.objectContaining({ job_id: 'job_u1', attempts: 2, completion_tokens: 8 }),
      expect.objectContaining({ job_id: 'job_u2', attempts: 1, completion_tokens: 7 }),
    ]);
    expect(all.totals).toMatchObject({
      jobs: 2,
      prompt_tokens: 12,
      completion_tokens: 15,
      total_tokens: 27,
      draft_tokens_proposed: 30,
      draft_tokens_accepted: 18,
    });
    const iso = (ms: number) => new Date(ms).toISOString();
    const part = (await (
      await api.req(`/v1/usage?from=${iso(t0 + 1000)}&to=${iso(t0 + 10_000)}`)
    ).json()) as {
      data: UsageRecord[];
    };
    expect(part.data.map((r) => r.jobId)).toEqual(['job_u2']);
    const b = (await (await api.req(`/v1/usage?from=${t0}`, { key: KEY_B })).json()) as {
      data: UsageRecord[];
    };
    expect(b.data.map((r) => r.jobId)).toEqual(['job_g']);
    const bad = await api.req('/v1/usage?from=yesterday');
    expect(bad.status).toBe(400);
  });
});
