/**
 * Chat templates: the published Llama-3-Instruct and Qwen2-Instruct (ChatML) templates render known
 * conversations byte for byte (BOS exactly once in the ids the engine feeds), summarization goes through
 * the template on instruct models and stays plain on stories260K, and the API (real Redis, packages
 * imported from tiny HF folders, the engine's tokenizer loader) enqueues the rendered string and answers
 * usage.prompt_tokens = the token count of that string, the count a stand-in worker takes with the
 * engine's own package tokenizer.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ChatTemplateError,
  type GenerationJob,
  promptRenderer,
  QUEUE_PREFIX,
  queueName,
  releaseReservation,
  SUMMARIZE_INSTRUCTION,
} from '@ppsd/contract';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineLoadTokenizer, type ModelInfo, modelInfoFromPackage } from '../../apps/api/src/models';
import { readHfFolder } from '../../workers/engine/src/formats/hf';
import { loadPackage, writePackage } from '../../workers/engine/src/package';
import type { Tokenizer } from '../../workers/engine/src/tokenizer';
import { doneEvent, startApi, type TestApi } from '../helpers/api-app';
import {
  type FamilyFolder,
  LLAMA3_TEMPLATE,
  QWEN2_TEMPLATE,
  writeLlama3Folder,
  writeQwen2Folder,
} from '../helpers/hf-families';
import { type RedisServer, startRedis } from '../helpers/redis-server';

const CHAT = [
  { role: 'system' as const, content: 'You are terse.' },
  { role: 'user' as const, content: '  Hello!  ' },
  { role: 'assistant' as const, content: 'Hi.' },
  { role: 'user' as const, content: 'Name a cat.' },
];

const LLAMA3_EXPECTED =
  '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>' +
  '<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>' +
  '<|start_header_id|>assistant<|end_header_id|>\n\nHi.<|eot_id|>' +
  '<|start_header_id|>user<|end_header_id|>\n\nName a cat.<|eot_id|>' +
  '<|start_header_id|>assistant<|end_header_id|>\n\n';

const QWEN2_EXPECTED =
  '<|im_start|>system\nYou are terse.<|im_end|>\n' +
  '<|im_start|>user\n  Hello!  <|im_end|>\n' +
  '<|im_start|>assistant\nHi.<|im_end|>\n' +
  '<|im_start|>user\nName a cat.<|im_end|>\n' +
  '<|im_start|>assistant\n';

let root: string;
let llama3: FamilyFolder;
let qwen2: FamilyFolder;
const tokenizers = new Map<string, Tokenizer>();

/** A package from the family folder, its model id, and its engine tokenizer. */
async function packageOf(id: string, f: FamilyFolder): Promise<string> {
  const folder = await readHfFolder(f.dir);
  const dir = path.join(root, id);
  await writePackage(dir, folder.model, folder.tokenizerJsonPath!, { name: id, chat: folder.chat });
  tokenizers.set(id, (await loadPackage(dir)).tokenizer);
  return dir;
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ppsd-chat-'));
  llama3 = await writeLlama3Folder(path.join(root, 'hf-llama3'));
  qwen2 = await writeQwen2Folder(path.join(root, 'hf-qwen2'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('published chat templates', () => {
  it('Llama 3 Instruct: byte for byte, BOS exactly once in the prompt ids', async () => {
    const r = promptRenderer({
      template: LLAMA3_TEMPLATE,
      bosToken: '<|begin_of_text|>',
      eosToken: '<|eot_id|>',
    });
    expect(r.chat(CHAT)).toBe(LLAMA3_EXPECTED);
    await packageOf('llama3-tiny', llama3);
    const ids = tokenizers.get('llama3-tiny')!.encodePrompt(LLAMA3_EXPECTED);
    const bos = llama3.tokenizer.special['<|begin_of_text|>'];
    expect(ids[0]).toBe(bos);
    expect(ids.filter((id) => id === bos)).toHaveLength(1);
    // every special token of the template is one id, never split into bytes
    expect(ids.filter((id) => id === llama3.tokenizer.special['<|eot_id|>'])).toHaveLength(4);
  });

  it('Qwen2 Instruct (ChatML): byte for byte, the default system turn, no BOS', async () => {
    const r = promptRenderer({ template: QWEN2_TEMPLATE, eosToken: '<|im_end|>' });
    expect(r.chat(CHAT)).toBe(QWEN2_EXPECTED);
    expect(r.chat([{ role: 'user', content: 'Hi' }])).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    );
    await packageOf('qwen2-tiny', qwen2);
    const ids = tokenizers.get('qwen2-tiny')!.encodePrompt(QWEN2_EXPECTED);
    expect(ids[0]).toBe(qwen2.tokenizer.special['<|im_start|>']);
    expect(ids).not.toContain(qwen2.tokenizer.special['<|endoftext|>']);
  });

  it('summarize: the documented instruction through the template; plain without one', () => {
    const r = promptRenderer({ template: QWEN2_TEMPLATE });
    expect(r.summarize('  The cat sat.  ')).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
        `<|im_start|>user\n${SUMMARIZE_INSTRUCTION}\n\nThe cat sat.<|im_end|>\n<|im_start|>assistant\n`,
    );
    const plain = promptRenderer();
    expect(plain.templated).toBe(false);
    expect(plain.summarize('  The cat sat.  ')).toBe('The cat sat.\n\nIn short:');
    expect(
      plain.chat([
        { role: 'user', content: 'a' },
        { role: 'user', content: 'b' },
      ]),
    ).toBe('a\nb');
  });

  it("a template's raise_exception is a ChatTemplateError", () => {
    const r = promptRenderer({
      template:
        "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation must start with a user') }}{% endif %}x",
    });
    expect(() => r.chat([{ role: 'assistant', content: 'a' }])).toThrow(ChatTemplateError);
    expect(() => promptRenderer({ template: '{% if %}' })).toThrow();
  });
});

describe('API with chat-template models', () => {
  let server: RedisServer;
  let api: TestApi;
  let workerRedis: Redis;
  const workers: Worker[] = [];
  const seen = new Map<string, GenerationJob>();

  beforeAll(async () => {
    server = await startRedis();
    const loader = engineLoadTokenizer;
    const models: ModelInfo[] = [];
    for (const [id, f] of [
      ['llama3-tiny', llama3],
      ['qwen2-tiny', qwen2],
    ] as const) {
      models.push(await modelInfoFromPackage(id, path.join(root, id), loader));
      if (!tokenizers.has(id)) await packageOf(id, f);
    }
    api = await startApi(server.url, {}, models);
    workerRedis = new Redis(server.url, { maxRetriesPerRequest: null });
    workerRedis.on('error', () => {});
    for (const m of models) {
      // stand-in worker: counts the prompt with the engine's own package tokenizer, as the engine does
      const w = new Worker<GenerationJob>(
        queueName(m.id),
        async (job) => {
          const d = job.data;
          seen.set(d.id, d);
          const promptTokens = tokenizers.get(m.id)!.encodePrompt(d.prompt).length;
          await api.emit(d.id, { type: 'start', attempt: 1, workerId: 'fake', decoder: 'ar', queuedMs: 0 });
          await api.emit(d.id, { type: 'tokens', attempt: 1, index: 0, ids: [100], text: 'ok' });
          await api.emit(d.id, doneEvent('ok', 1, promptTokens));
          await releaseReservation(api.redis, d.tenant, d.id);
        },
        { connection: workerRedis, prefix: QUEUE_PREFIX },
      );
      workers.push(w);
    }
  });
  afterAll(async () => {
    for (const w of workers) await w.close();
    workerRedis?.disconnect();
    await api?.close();
    await server?.stop();
  });

  it('chat: the rendered string is enqueued and usage.prompt_tokens is its token count', async () => {
    for (const [id, expected] of [
      ['llama3-tiny', LLAMA3_EXPECTED],
      ['qwen2-tiny', QWEN2_EXPECTED],
    ] as const) {
      const res = await api.req('/v1/chat/completions', {
        body: { model: id, messages: CHAT, max_tokens: 4 },
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { id: string; usage: { prompt_tokens: number } };
      const job = [...seen.values()].find((j) => j.model === id)!;
      expect(job.prompt).toBe(expected);
      const count = tokenizers.get(id)!.encodePrompt(expected).length;
      expect(job.promptTokens).toBe(count); // admission
      expect(body.usage.prompt_tokens).toBe(count);
      seen.clear();
    }
  });

  it('summarize on an instruct model sends the instruction through its template', async () => {
    const res = await api.req('/v1/summarize', {
      body: { model: 'qwen2-tiny', text: 'The cat sat.', max_tokens: 4 },
    });
    expect(res.status).toBe(200);
    const job = [...seen.values()][0];
    expect(job.prompt).toBe(promptRenderer({ template: QWEN2_TEMPLATE }).summarize('The cat sat.'));
    expect(job.prompt).toContain(SUMMARIZE_INSTRUCTION);
    seen.clear();
  });
});
