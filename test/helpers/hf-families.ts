/**
 * Tiny Hugging Face folders of the families the engine imports, written the way the published models lay
 * them out: config.json with each family's own fields (Llama 3.2, Qwen2.5, Mistral, SmolLM), random
 * weights in *.safetensors (BF16 for Llama 3, every tensor as HF stores it), a byte-level BPE
 * tokenizer.json with the family's special tokens and post-processor, tokenizer_config.json with the
 * published chat template, generation_config.json with its eos ids.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { layerTensorName } from '../../workers/engine/src/formats/hf-llama';
import { type StoredTensor, writeSafetensors } from '../../workers/engine/src/formats/safetensors';
import {
  BIAS_KEYS,
  type LlamaConfig,
  type LlamaModel,
  MATRIX_KEYS,
} from '../../workers/engine/src/model/llama';
import { dense, floatToBf16 } from '../../workers/engine/src/model/matrix';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';
import { bosTemplateProcessor } from '../../workers/engine/src/tokenizer/to-hf';

/** Meta-Llama-3-8B-Instruct's chat_template, as published in its tokenizer_config.json. */
export const LLAMA3_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/** Qwen2-7B-Instruct's chat_template (ChatML), as published in its tokenizer_config.json. */
export const QWEN2_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// GPT-2's bytes_to_unicode: the printable bytes stand for themselves, the others for 256 + n.
function byteChars(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const out: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(keep.includes(b) ? b : 256 + n++);
  return out;
}

const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const MERGES = [
  ['Ġ', 't'],
  ['h', 'e'],
  ['Ġt', 'he'],
  ['i', 'n'],
  ['e', 'r'],
];

export interface ByteBpe {
  json: Record<string, unknown>;
  /** id of each special token */
  special: Record<string, number>;
  size: number;
}

/** A byte-level BPE tokenizer.json: 256 byte tokens, a few merges, then `specials` as special added tokens. */
export function byteBpeTokenizer(family: 'llama3' | 'qwen2', specials: string[]): ByteBpe {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, i) => {
    vocab[c] = i;
  });
  for (const [a, b] of MERGES) vocab[a + b] = Object.keys(vocab).length;
  const special: Record<string, number> = {};
  const added = specials.map((content) => {
    const id = Object.keys(vocab).length + Object.keys(special).length;
    special[content] = id;
    return {
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    };
  });
  const bytes = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false };
  const split = family === 'llama3' ? LLAMA3_SPLIT : QWEN2_SPLIT;
  const bos = '<|begin_of_text|>';
  const postProcessor =
    family === 'llama3'
      ? {
          type: 'Sequence',
          processors: [
            { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
            bosTemplateProcessor(bos, special[bos]),
          ],
        }
      : { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: family === 'qwen2' ? { type: 'NFC' } : null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: split }, behavior: 'Isolated', invert: false },
        bytes,
      ],
    },
    post_processor: postProcessor,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: family === 'qwen2' ? '' : null,
      end_of_word_suffix: family === 'qwen2' ? '' : null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: family === 'llama3',
      vocab,
      merges: MERGES.map(([a, b]) => `${a} ${b}`),
    },
  };
  return { json, special, size: Object.keys(vocab).length + added.length };
}

const bf16 = (a: Float32Array) => Uint16Array.from(a, floatToBf16);

/** The model's tensors under HF names, every one (norms and biases too) in `dtype`, as HF checkpoints store them. */
export function hfTensors(model: LlamaModel, dtype: 'F32' | 'BF16'): [string, StoredTensor][] {
  const w = model.weights;
  const out: [string, StoredTensor][] = [];
  const put = (name: string, data: Float32Array, shape: number[]) =>
    out.push([name, dtype === 'F32' ? { dtype, shape, data } : { dtype, shape, data: bf16(data) }]);
  put('model.embed_tokens.weight', dense(w.tokenEmbedding), [w.tokenEmbedding.rows, w.tokenEmbedding.cols]);
  w.layers.forEach((layer, l) => {
    put(layerTensorName(l, 'attnNorm'), layer.attnNorm, [layer.attnNorm.length]);
    put(layerTensorName(l, 'ffnNorm'), layer.ffnNorm, [layer.ffnNorm.length]);
    for (const key of MATRIX_KEYS)
      put(layerTensorName(l, key), dense(layer[key]), [layer[key].rows, layer[key].cols]);
    for (const key of BIAS_KEYS) {
      const b = layer[key];
      if (b) put(layerTensorName(l, key), b, [b.length]);
    }
  });
  put('model.norm.weight', w.finalNorm, [w.finalNorm.length]);
  if (w.classifier !== w.tokenEmbedding)
    put('lm_head.weight', dense(w.classifier), [w.classifier.rows, w.classifier.cols]);
  return out;
}

export interface FamilyFolder {
  dir: string;
  /** The random model the folder was written from (f32 weights before any bf16 rounding). */
  model: LlamaModel;
  tokenizer: ByteBpe;
}

async function writeFolder(
  dir: string,
  files: { config: unknown; generation: unknown; tokenizerConfig: unknown; tokenizerJson: unknown },
  model: LlamaModel,
  dtype: 'F32' | 'BF16',
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const json = (name: string, v: unknown) =>
    writeFile(path.join(dir, name), `${JSON.stringify(v, null, 2)}\n`);
  await json('config.json', files.config);
  await json('generation_config.json', files.generation);
  await json('tokenizer_config.json', files.tokenizerConfig);
  await json('tokenizer.json', files.tokenizerJson);
  await writeSafetensors(path.join(dir, 'model.safetensors'), hfTensors(model, dtype), {
    metadata: { format: 'pt' },
  });
}

/** The random model behind a family folder: `c` plus the fields the folder's config.json implies. */
const model = (
  c: Partial<LlamaConfig> & Pick<LlamaConfig, 'dim' | 'nLayers' | 'nHeads' | 'vocabSize'>,
  seed: number,
) => randomLlama(llamaConfig(c), seed, { std: 0.3 });

/**
 * Llama 3.2-style: BF16 weights, `llama3` rope scaling (original context 64 of 256), explicit head_dim 16
 * at hidden 32 / 4 heads, GQA, tied embeddings, eos ids [end_of_text, eom, eot] across config and
 * generation config, the Llama 3 tokenizer's special tokens and BOS post-processor, the Llama 3 template.
 */
export async function writeLlama3Folder(dir: string): Promise<FamilyFolder> {
  const tokenizer = byteBpeTokenizer('llama3', [
    '<|begin_of_text|>',
    '<|end_of_text|>',
    '<|start_header_id|>',
    '<|end_header_id|>',
    '<|eom_id|>',
    '<|eot_id|>',
  ]);
  const s = tokenizer.special;
  const vocabSize = tokenizer.size + 3; // padded like 128256 > the tokenizer's own ids
  const m = model(
    {
      dim: 32,
      hiddenDim: 48,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 2,
      headDim: 16,
      vocabSize,
      maxSeqLen: 256,
      ropeTheta: 10000,
      tiedEmbeddings: true,
      ropeScaling: {
        type: 'llama3',
        factor: 4,
        lowFreqFactor: 1,
        highFreqFactor: 8,
        originalMaxPositionEmbeddings: 64,
      },
    },
    31,
  );
  const config = {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: s['<|begin_of_text|>'],
    eos_token_id: [s['<|end_of_text|>'], s['<|eom_id|>'], s['<|eot_id|>']],
    head_dim: 16,
    hidden_act: 'silu',
    hidden_size: 32,
    initializer_range: 0.02,
    intermediate_size: 48,
    max_position_embeddings: 256,
    mlp_bias: false,
    model_type: 'llama',
    num_attention_heads: 4,
    num_hidden_layers: 2,
    num_key_value_heads: 2,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: {
      factor: 4.0,
      high_freq_factor: 8.0,
      low_freq_factor: 1.0,
      original_max_position_embeddings: 64,
      rope_type: 'llama3',
    },
    rope_theta: 10000.0,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    transformers_version: '4.45.0.dev0',
    use_cache: true,
    vocab_size: vocabSize,
  };
  const generation = {
    bos_token_id: s['<|begin_of_text|>'],
    do_sample: true,
    eos_token_id: [s['<|end_of_text|>'], s['<|eom_id|>'], s['<|eot_id|>']],
    temperature: 0.6,
    top_p: 0.9,
    transformers_version: '4.45.0.dev0',
  };
  const tokenizerConfig = {
    added_tokens_decoder: Object.fromEntries(
      Object.entries(s).map(([content, id]) => [
        String(id),
        { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true },
      ]),
    ),
    bos_token: '<|begin_of_text|>',
    chat_template: LLAMA3_TEMPLATE,
    clean_up_tokenization_spaces: true,
    eos_token: '<|eot_id|>',
    model_input_names: ['input_ids', 'attention_mask'],
    model_max_length: 131072,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  await writeFolder(dir, { config, generation, tokenizerConfig, tokenizerJson: tokenizer.json }, m, 'BF16');
  return { dir, model: m, tokenizer };
}

/**
 * Qwen2.5-Instruct-style: q/k/v biases, tied embeddings, rope_theta 1e6, no BOS (bos_token null, a
 * ByteLevel post-processor), eos <|im_end|> in config.json and [<|im_end|>, <|endoftext|>] in
 * generation_config.json, the ChatML template.
 */
export async function writeQwen2Folder(dir: string): Promise<FamilyFolder> {
  const tokenizer = byteBpeTokenizer('qwen2', ['<|endoftext|>', '<|im_start|>', '<|im_end|>']);
  const s = tokenizer.special;
  const vocabSize = tokenizer.size + 5;
  const m = model(
    {
      dim: 32,
      hiddenDim: 64,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 2,
      vocabSize,
      maxSeqLen: 256,
      ropeTheta: 1000000,
      tiedEmbeddings: true,
      qkvBias: true,
      normEps: 1e-6,
    },
    47,
  );
  const config = {
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: s['<|endoftext|>'],
    eos_token_id: s['<|im_end|>'],
    hidden_act: 'silu',
    hidden_size: 32,
    initializer_range: 0.02,
    intermediate_size: 64,
    max_position_embeddings: 256,
    max_window_layers: 21,
    model_type: 'qwen2',
    num_attention_heads: 4,
    num_hidden_layers: 2,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    sliding_window: 256,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    transformers_version: '4.43.1',
    use_cache: true,
    use_sliding_window: false,
    vocab_size: vocabSize,
  };
  const generation = {
    bos_token_id: s['<|endoftext|>'],
    pad_token_id: s['<|endoftext|>'],
    do_sample: true,
    eos_token_id: [s['<|im_end|>'], s['<|endoftext|>']],
    repetition_penalty: 1.05,
    temperature: 0.7,
    top_p: 0.8,
    top_k: 20,
    transformers_version: '4.37.0',
  };
  const tokenizerConfig = {
    add_prefix_space: false,
    bos_token: null,
    chat_template: QWEN2_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: '<|im_end|>',
    errors: 'replace',
    model_max_length: 131072,
    pad_token: '<|endoftext|>',
    split_special_tokens: false,
    tokenizer_class: 'Qwen2Tokenizer',
    unk_token: null,
  };
  await writeFolder(dir, { config, generation, tokenizerConfig, tokenizerJson: tokenizer.json }, m, 'BF16');
  return { dir, model: m, tokenizer };
}

/**
 * Mistral-7B-v0.3-style (`sliding_window: null`, untied classifier) or v0.1-style (`sliding_window`
 * given) over a SentencePiece tokenizer.json (`tokenizerJson`, e.g. stories260K's converted one).
 */
export async function writeMistralFolder(
  dir: string,
  tokenizerJson: unknown,
  vocabSize: number,
  slidingWindow: number | null = null,
): Promise<{ dir: string; model: LlamaModel }> {
  const m = model(
    {
      dim: 32,
      hiddenDim: 56,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 1,
      vocabSize,
      maxSeqLen: 64,
      ropeTheta: 1000000,
      tiedEmbeddings: false,
    },
    53,
  );
  const config = {
    architectures: ['MistralForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 1,
    eos_token_id: 2,
    head_dim: null,
    hidden_act: 'silu',
    hidden_size: 32,
    initializer_range: 0.02,
    intermediate_size: 56,
    max_position_embeddings: 64,
    model_type: 'mistral',
    num_attention_heads: 4,
    num_hidden_layers: 2,
    num_key_value_heads: 1,
    rms_norm_eps: 1e-5,
    rope_theta: 1000000.0,
    sliding_window: slidingWindow,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.42.0.dev0',
    use_cache: true,
    vocab_size: vocabSize,
  };
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: '<s>',
    eos_token: '</s>',
    tokenizer_class: 'LlamaTokenizer',
  };
  await writeFolder(
    dir,
    { config, generation: { bos_token_id: 1, eos_token_id: 2 }, tokenizerConfig, tokenizerJson },
    m,
    'F32',
  );
  return { dir, model: m };
}
