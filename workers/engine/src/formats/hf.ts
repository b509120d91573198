/**
 * Hugging Face folders of Llama-block models (Llama, Mistral, Qwen2; hf-llama.ts reads their configs):
 * config.json + one or many *.safetensors (optionally indexed by model.safetensors.index.json) +
 * tokenizer.json, and when present generation_config.json (more eos ids) and tokenizer_config.json
 * (the chat template and the special tokens it prints; `add_bos_token`, read by the tokenizer).
 */
import { access, copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { LlamaModel } from '../model/llama';
import type { ChatTemplate } from '../package/manifest';
import { readLlama2cTokenizer } from '../tokenizer/llama2c';
import { llama2cToHfJson } from '../tokenizer/to-hf';
import {
  configFromHfJson,
  configToHfJson,
  type HfGenerationConfigJson,
  type HfLlamaConfigJson,
  LM_HEAD,
  modelFromHfTensors,
  modelToHfTensors,
  requiredHfTensorNames,
} from './hf-llama';
import type { ProgressFn } from './progress';
import { readSafetensors, readSafetensorsHeader, type Tensor, writeSafetensors } from './safetensors';

export interface HfFolder {
  model: LlamaModel;
  /** The folder's tokenizer.json, when it has one. */
  tokenizerJsonPath: string | undefined;
  /** The chat template of tokenizer_config.json (or chat_template.jinja), when the model has one. */
  chat?: ChatTemplate;
}

export interface ReadHfFolderOptions {
  onProgress?: ProgressFn;
  /** Serve at most this many positions (default: max_position_embeddings). */
  maxSeqLen?: number;
}

// Buffers HF checkpoints carry that the engine recomputes.
const IGNORED_TENSORS = /(^|\.)rotary_emb\.inv_freq$/;

export async function readHfFolder(dir: string, options: ReadHfFolderOptions = {}): Promise<HfFolder> {
  const configPath = path.join(dir, 'config.json');
  if (!(await exists(configPath)))
    throw new Error(`${dir}: not a Hugging Face model folder (no config.json)`);
  const configJson = await readJson<HfLlamaConfigJson>(configPath, 'config.json');
  const generationPath = path.join(dir, 'generation_config.json');
  const generation = (await exists(generationPath))
    ? await readJson<HfGenerationConfigJson>(generationPath, 'generation_config.json')
    : undefined;
  const config = configFromHfJson(configJson, configPath, { generation, maxSeqLen: options.maxSeqLen });

  const files = await weightFiles(dir);
  // Which file holds each tensor, from the headers alone.
  const owner = new Map<string, string>();
  const bytesOf = new Map<string, number>();
  for (const file of files) {
    const header = await readSafetensorsHeader(file);
    for (const [name, entry] of header.tensors) {
      if (owner.has(name))
        throw new Error(`${dir}: tensor '${name}' appears in both ${owner.get(name)} and ${file}`);
      owner.set(name, file);
      bytesOf.set(name, entry.end - entry.begin);
    }
  }
  const required = new Set(requiredHfTensorNames(config));
  for (const name of owner.keys()) {
    const expectedExtra = IGNORED_TENSORS.test(name) || (name === LM_HEAD && config.tiedEmbeddings);
    if (!required.has(name) && !expectedExtra) {
      throw new Error(
        `${dir}: unexpected tensor '${name}' (not part of this ${config.family ?? 'llama'} model; refusing to ignore it)`,
      );
    }
  }
  for (const name of required) {
    if (!owner.has(name)) throw new Error(`${dir}: missing tensor '${name}'`);
  }

  const total = [...required].reduce((sum, n) => sum + (bytesOf.get(n) ?? 0), 0);
  let before = 0;
  const tensors = new Map<string, Tensor>();
  for (const file of files) {
    const names = [...required].filter((n) => owner.get(n) === file);
    if (names.length === 0) continue;
    const base = before;
    const read = await readSafetensors(file, {
      names,
      onProgress: (done) => options.onProgress?.(base + done, total),
    });
    for (const [name, t] of read.tensors) tensors.set(name, t);
    before += names.reduce((sum, n) => sum + (bytesOf.get(n) ?? 0), 0);
  }
  const model = modelFromHfTensors(config, tensors, dir);

  const tokenizerJsonPath = path.join(dir, 'tokenizer.json');
  const chat = await readChatTemplate(dir);
  return {
    model,
    tokenizerJsonPath: (await exists(tokenizerJsonPath)) ? tokenizerJsonPath : undefined,
    ...(chat ? { chat } : {}),
  };
}

/** A special token of tokenizer_config.json: a string, or an AddedToken object with `content`. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  const content = (v as { content?: unknown } | null | undefined)?.content;
  return typeof content === 'string' ? content : undefined;
}

/**
 * The chat template as transformers finds it: `chat_template` of tokenizer_config.json (a string, or a
 * list of named templates of which 'default' is the chat one), else a chat_template.jinja file.
 */
async function readChatTemplate(dir: string): Promise<ChatTemplate | undefined> {
  const configPath = path.join(dir, 'tokenizer_config.json');
  const config = (await exists(configPath))
    ? await readJson<Record<string, unknown>>(configPath, 'tokenizer_config.json')
    : {};
  let template: string | undefined;
  const raw = config.chat_template;
  if (typeof raw === 'string') template = raw;
  else if (Array.isArray(raw)) {
    const named = raw.find((t) => (t as { name?: unknown })?.name === 'default') as
      | { template?: unknown }
      | undefined;
    if (typeof named?.template !== 'string')
      throw new Error(`${configPath}: chat_template is a list without a 'default' template`);
    template = named.template;
  } else if (raw !== undefined && raw !== null)
    throw new Error(`${configPath}: chat_template is not a string`);
  const jinjaPath = path.join(dir, 'chat_template.jinja');
  if (template === undefined && (await exists(jinjaPath))) template = await readFile(jinjaPath, 'utf8');
  if (!template) return undefined;
  const bosToken = tokenText(config.bos_token);
  const eosToken = tokenText(config.eos_token);
  return {
    template,
    ...(bosToken !== undefined ? { bosToken } : {}),
    ...(eosToken !== undefined ? { eosToken } : {}),
  };
}

async function weightFiles(dir: string): Promise<string[]> {
  const indexPath = path.join(dir, 'model.safetensors.index.json');
  if (await exists(indexPath)) {
    const index = await readJson<{ weight_map?: Record<string, string> }>(indexPath, 'safetensors index');
    if (!index.weight_map || typeof index.weight_map !== 'object') {
      throw new Error(`${indexPath}: has no weight_map`);
    }
    const files = [...new Set(Object.values(index.weight_map))].sort();
    for (const f of files) {
      if (!(await exists(path.join(dir, f)))) throw new Error(`${indexPath}: lists ${f}, which is missing`);
    }
    return files.map((f) => path.join(dir, f));
  }
  const names = (await readdir(dir)).sort();
  const shards = names.filter((n) => n.endsWith('.safetensors'));
  if (shards.length === 0) {
    const torch = names.some((n) => n.endsWith('.bin') || n.endsWith('.pt') || n.endsWith('.pth'));
    throw new Error(
      `${dir}: no *.safetensors weights${torch ? ' (PyTorch .bin/.pt weights are not supported; convert to safetensors)' : ''}`,
    );
  }
  return shards.map((n) => path.join(dir, n));
}

/**
 * Writes `model` as a HF Llama folder. `tokenizer` is a tokenizer.json (copied) or a llama2.c
 * tokenizer.bin (converted).
 */
export async function writeHfFolder(
  model: LlamaModel,
  tokenizer: string,
  dir: string,
  options: { onProgress?: ProgressFn } = {},
): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(
    path.join(dir, 'config.json'),
    `${JSON.stringify(configToHfJson(model.config), null, 2)}\n`,
  );
  await writeSafetensors(path.join(dir, 'model.safetensors'), modelToHfTensors(model), {
    metadata: { format: 'pt' },
    onProgress: options.onProgress,
  });
  const tokenizerOut = path.join(dir, 'tokenizer.json');
  let tokenizerJson: {
    added_tokens?: { id: number; content: string }[];
    model?: { vocab?: Record<string, number> };
  };
  if (tokenizer.endsWith('.json')) {
    await copyFile(tokenizer, tokenizerOut);
    tokenizerJson = await readJson(tokenizerOut, 'tokenizer.json');
  } else {
    tokenizerJson = llama2cToHfJson(await readLlama2cTokenizer(tokenizer));
    await writeFile(tokenizerOut, JSON.stringify(tokenizerJson));
  }
  const pieceOf = (id: number): string | undefined =>
    tokenizerJson.added_tokens?.find((t) => t.id === id)?.content ??
    Object.entries(tokenizerJson.model?.vocab ?? {}).find(([, v]) => v === id)?.[0];
  const tokenizerConfig = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: pieceOf(model.config.bosId),
    eos_token: pieceOf(model.config.eosId),
    add_bos_token: true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: model.config.maxSeqLen,
  };
  await writeFile(path.join(dir, 'tokenizer_config.json'), `${JSON.stringify(tokenizerConfig, null, 2)}\n`);
}

async function readJson<T>(file: string, what: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(
      `${file}: cannot read ${what} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new Error(`${file}: ${what} is not valid JSON (${(err as Error).message})`);
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
