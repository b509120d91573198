/**
 * Options end to end: the official `openai` client against the real API and a real worker (3 CPU
 * devices, so pipelines of 2 or 3 stages) on real Redis, s3rver and stories260K.
 * - logprobs come from the verifying model: the same tokens and values under ar / eesd / dv / ppsd / spd,
 *   equal to the engine's own AR run, stream and not, completions and chat;
 * - logit_bias and the penalties give, under every decoder, exactly the engine's AR output with the same
 *   processors (and not the unprocessed one);
 * - speculation.stages and draftLength change what ran (the job's speculation summary says so), and
 *   stages beyond the workers' maxStages is a 400.
 */
import { renderChatPrompt } from '@ppsd/contract';
import { Engine } from '@ppsd/engine';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enqueue, MODEL, makeJob, type Stack, startStack, waitFor, waitForEnd } from '../helpers/stack';

let stack: Stack;
let engine: Engine;
let client: OpenAI;
const DECODERS = ['ar', 'eesd', 'dv', 'ppsd', 'spd'] as const;
const PROMPT = 'Once upon a time, there was a little';
const auth = () => ({ Authorization: `Bearer ${stack.apiKey}`, 'Content-Type': 'application/json' });
const TOL = 1e-4;

beforeAll(async () => {
  stack = await startStack({ workers: 1, workerEnv: { PPSD_DEVICES: 'cpu,cpu,cpu' } });
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

const greedy = { max_tokens: 20, temperature: 0 };
const speculation = (decoder: string) => ({ speculation: { decoder } }) as Record<string, unknown>;

describe('logprobs', () => {
  it('completions: the same tokens and logprobs under every decoder, equal to the engine AR run', async () => {
    const direct = await engine.generate(PROMPT, { maxTokens: 20, temperature: 0, logprobs: 3 });
    for (const decoder of DECODERS) {
      const r = await client.completions.create({
        model: MODEL,
        prompt: PROMPT,
        ...greedy,
        logprobs: 3,
        ...speculation(decoder),
      });
      const l = r.choices[0].logprobs!;
      expect(r.choices[0].text, decoder).toBe(direct.text);
      expect(l.tokens, decoder).toEqual(direct.logprobs!.map((e) => e.token));
      expect(l.text_offset).toEqual(direct.logprobs!.map((e) => e.offset));
      l.token_logprobs!.forEach((x, i) => {
        expect(Math.abs(x - direct.logprobs![i].logprob), `${decoder} token ${i}`).toBeLessThan(TOL);
        const top = l.top_logprobs![i];
        expect(Object.keys(top)).toContain(l.tokens![i]);
        for (const t of direct.logprobs![i].top) expect(Math.abs(top[t.token] - t.logprob)).toBeLessThan(TOL);
      });
    }
  });

  it('chat, stream and not: content entries equal, under AR and PPSD', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me a story about a cat.' }];
    const direct = await engine.generate(renderChatPrompt(messages), {
      maxTokens: 16,
      temperature: 0,
      logprobs: 2,
    });
    for (const decoder of ['ar', 'ppsd']) {
      const body = {
        model: MODEL,
        messages,
        max_tokens: 16,
        temperature: 0,
        logprobs: true,
        top_logprobs: 2,
      };
      const r = await client.chat.completions.create({ ...body, ...speculation(decoder) });
      const content = r.choices[0].logprobs!.content!;
      expect(content.map((c) => c.token)).toEqual(direct.logprobs!.map((e) => e.token));
      content.forEach((c, i) => {
        expect(Math.abs(c.logprob - direct.logprobs![i].logprob)).toBeLessThan(TOL);
        expect(c.bytes).toEqual(direct.logprobs![i].bytes);
        expect(c.top_logprobs).toHaveLength(2);
      });
      const stream = await client.chat.completions.create({ ...body, ...speculation(decoder), stream: true });
      const streamed: OpenAI.Chat.Completions.ChatCompletionTokenLogprob[] = [];
      let text = '';
      for await (const chunk of stream) {
        streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
        text += chunk.choices[0]?.delta?.content ?? '';
      }
      expect(text).toBe(r.choices[0].message.content);
      expect(streamed.map((c) => c.token)).toEqual(content.map((c) => c.token));
      streamed.forEach((c, i) => {
        expect(Math.abs(c.logprob - content[i].logprob)).toBeLessThan(TOL);
      });
    }
  });
});

describe('logit_bias and penalties', () => {
  it('every decoder gives the engine AR output with the same processors', async () => {
    const plain = await engine.generate(PROMPT, { maxTokens: 20, temperature: 0 });
    const banned = plain.tokens[2];
    const processors = { logitBias: { [banned]: -100 }, presencePenalty: 0.8, frequencyPenalty: 0.6 };
    const expected = await engine.generate(PROMPT, { maxTokens: 20, temperature: 0, ...processors });
    expect(expected.text).not.toBe(plain.text);
    expect(expected.tokens).not.toContain(banned);
    for (const decoder of DECODERS) {
      const r = await client.completions.create({
        model: MODEL,
        prompt: PROMPT,
        ...greedy,
        logit_bias: { [banned]: -100 },
        presence_penalty: 0.8,
        frequency_penalty: 0.6,
        ...speculation(decoder),
      });
      expect(r.choices[0].text, decoder).toBe(expected.text);
    }
  });
});

describe('speculation settings', () => {
  interface JobView {
    status: string;
    speculation: { decoder: string; pipelineStages?: number; draftLength?: number | 'adaptive' } | null;
  }
  async function runJob(spec: unknown): Promise<JobView> {
    const res = await fetch(`${stack.apiUrl}/v1/jobs`, {
      method: 'POST',
      headers: auth(),
      body: JSON.stringify({ prompt: PROMPT, max_tokens: 12, temperature: 0, speculation: spec }),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    return waitFor(
      `job ${id}`,
      async () => {
        const v = (await (
          await fetch(`${stack.apiUrl}/v1/jobs/${id}`, { headers: auth() })
        ).json()) as JobView;
        return v.status === 'completed' || v.status === 'failed' ? v : undefined;
      },
      60_000,
    );
  }

  it('stages sets the pipeline depth and draftLength the block length: the summary reports what ran', async () => {
    const [hb] = await stack.readyWorkers();
    expect(hb.maxStages).toBe(3);
    for (const decoder of ['ppsd', 'spd']) {
      // the plan's depth is one stage per device; a request may ask for a shallower pipeline
      expect((await runJob({ decoder })).speculation?.pipelineStages).toBe(3);
      expect((await runJob({ decoder, stages: 2 })).speculation?.pipelineStages).toBe(2);
      expect((await runJob({ decoder, stages: 3 })).speculation?.pipelineStages).toBe(3);
    }
    for (const decoder of ['eesd', 'dv']) {
      const adaptive = await runJob({ decoder });
      expect(adaptive.status, JSON.stringify(adaptive)).toBe('completed');
      expect(adaptive.speculation?.draftLength).toBe('adaptive');
      expect((await runJob({ decoder, draftLength: 3 })).speculation?.draftLength).toBe(3);
    }
  });

  it("stages beyond the workers' maxStages is a 400 naming speculation.stages", async () => {
    const res = await fetch(`${stack.apiUrl}/v1/completions`, {
      method: 'POST',
      headers: auth(),
      body: JSON.stringify({ model: MODEL, prompt: PROMPT, speculation: { decoder: 'ppsd', stages: 4 } }),
    });
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as { error: { param: string; message: string } };
    expect(error.param).toBe('speculation.stages');
    expect(error.message).toMatch(/at most 3 stages/);
  });

  it('a job that reached the worker anyway (no worker up at admission) fails at once with a clear error', async () => {
    const id = `job_stages_${Date.now()}`;
    await enqueue(stack.redis.url, makeJob(id, { speculation: { decoder: 'ppsd', stages: 5 } }));
    const evs = await waitForEnd(stack.client, id);
    const last = evs[evs.length - 1].event;
    expect(last).toMatchObject({ type: 'error', code: 'unsupported_stages' });
    expect(last.type === 'error' && last.message).toMatch(/pipelines of 2 to 3 stages/);
    expect(evs.filter((e) => e.event.type === 'tokens')).toEqual([]);
  });
});
