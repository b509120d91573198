/**
 * Bring-your-own-model families: tiny Hugging Face folders of Llama 3 (BF16, llama3 rope scaling,
 * explicit head_dim), Qwen2 (q/k/v biases, no BOS) and Mistral read with their published config fields,
 * the ORT graphs checked against the float64 reference (at positions past the original context for
 * llama3 scaling), linear and dynamic scaling, refusals that name the field, BOS and eos handling, and
 * the packages the importer writes (chat template, addBos).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decoder } from '../../workers/engine/src/decode/decoder';
import { startStats } from '../../workers/engine/src/decode/decoder';
import { readGgufLlama, writeGgufLlama } from '../../workers/engine/src/formats/gguf-llama';
import { readHfFolder } from '../../workers/engine/src/formats/hf';
import { runGeneration } from '../../workers/engine/src/generate/generate';
import { ropeInvFreq, ropeTables } from '../../workers/engine/src/graph/rope';
import { endTokenIds, type LlamaModel } from '../../workers/engine/src/model/llama';
import { referenceForward } from '../../workers/engine/src/model/reference';
import { loadPackage, writePackage } from '../../workers/engine/src/package';
import { createOrtStage } from '../../workers/engine/src/runtime';
import { llama2cToHfJson, readLlama2cTokenizer } from '../../workers/engine/src/tokenizer';
import {
  type FamilyFolder,
  LLAMA3_TEMPLATE,
  QWEN2_TEMPLATE,
  writeLlama3Folder,
  writeMistralFolder,
  writeQwen2Folder,
} from '../helpers/hf-families';
import { expectSameWeights } from '../helpers/same-weights';
import { TOK512 } from '../helpers/shared';
import { relErr, row } from './runtime-helpers';

let root: string;
let llama3: FamilyFolder;
let qwen2: FamilyFolder;
const at = (name: string) => path.join(root, name);

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ppsd-families-'));
  llama3 = await writeLlama3Folder(at('llama3'));
  qwen2 = await writeQwen2Folder(at('qwen2'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Full-model ORT logits [T, vocab] of `tokens` in one forward. */
async function ortLogits(model: LlamaModel, tokens: number[]): Promise<Float32Array> {
  const stage = await createOrtStage(
    model,
    { firstLayer: 0, endLayer: model.config.nLayers },
    { threads: 1, maxSeqLen: model.config.maxSeqLen },
  );
  try {
    return (await stage.forward({ tokens: Int32Array.from(tokens) })).logits!;
  } finally {
    await stage.release();
  }
}

const tokensOf = (n: number, vocab: number, seed: number) =>
  Array.from({ length: n }, (_, i) => (i * 37 + seed * 11 + ((i * i) % 7)) % vocab);

function maxRowErr(ort: Float32Array, ref: Float64Array[], from: number, vocab: number): number {
  let worst = 0;
  for (let t = from; t < ref.length; t++) worst = Math.max(worst, relErr(row(ort, t, vocab), ref[t]));
  return worst;
}

describe('Llama 3 (BF16, llama3 rope scaling, explicit head_dim)', () => {
  it('reads config.json and generation_config.json as published', async () => {
    const { model, chat } = await readHfFolder(llama3.dir);
    const c = model.config;
    const s = llama3.tokenizer.special;
    expect(c.headDim).toBe(16); // not hidden_size / heads = 8
    expect(c.ropeScaling).toEqual({
      type: 'llama3',
      factor: 4,
      lowFreqFactor: 1,
      highFreqFactor: 8,
      originalMaxPositionEmbeddings: 64,
    });
    expect(c.tiedEmbeddings).toBe(true);
    expect(endTokenIds(c)).toEqual([s['<|end_of_text|>'], s['<|eom_id|>'], s['<|eot_id|>']]);
    expect(endTokenIds(c)).not.toContain(s['<|begin_of_text|>']);
    expect(c.bosId).toBe(s['<|begin_of_text|>']);
    expect(chat?.bosToken).toBe('<|begin_of_text|>');
    expect(chat?.eosToken).toBe('<|eot_id|>');
    // the BF16 values, exactly (the random f32 weights rounded to bf16 on writing)
    const wq = model.weights.layers[1].wq;
    expect([wq.rows, wq.cols]).toEqual([64, 32]);
  });

  it("inverse frequencies follow transformers' _compute_llama3_parameters", () => {
    const c = llama3.model.config;
    const got = ropeInvFreq(c);
    // the formula in float64, written out independently
    const hd = 16;
    const {
      factor,
      lowFreqFactor: low,
      highFreqFactor: high,
      originalMaxPositionEmbeddings: old,
    } = {
      factor: 4,
      lowFreqFactor: 1,
      highFreqFactor: 8,
      originalMaxPositionEmbeddings: 64,
    };
    const bands: string[] = [];
    for (let i = 0; i < hd / 2; i++) {
      const inv = 1 / 10000 ** ((2 * i) / hd);
      const wavelen = (2 * Math.PI) / inv;
      let want = inv; // high frequencies keep theirs
      let band = 'high';
      if (wavelen > old / low) [want, band] = [inv / factor, 'low'];
      else if (wavelen >= old / high) {
        const smooth = (old / wavelen - low) / (high - low);
        [want, band] = [(1 - smooth) * (inv / factor) + smooth * inv, 'medium'];
      }
      bands.push(band);
      expect(Math.abs(got[i] - want) / want).toBeLessThan(1e-6);
    }
    // the test config exercises all three bands
    expect(new Set(bands)).toEqual(new Set(['high', 'medium', 'low']));
  });

  it('ORT graph = float64 reference at positions beyond original_max_position_embeddings', async () => {
    const { model } = await readHfFolder(llama3.dir);
    const tokens = tokensOf(100, llama3.tokenizer.size, 1);
    const ref = referenceForward(model, tokens).logits;
    const ort = await ortLogits(model, tokens);
    const V = model.config.vocabSize;
    expect(maxRowErr(ort, ref, 0, V)).toBeLessThan(1e-4);
    // the scaling matters past the original context: plain RoPE gives other logits there
    const plain = referenceForward(
      { ...model, config: { ...model.config, ropeScaling: undefined } },
      tokens,
    ).logits;
    expect(relErr(ref[90], plain[90])).toBeGreaterThan(1e-3);
  });
});

describe('Qwen2 (q/k/v biases, no BOS)', () => {
  it('reads the config: biases, tied, eos from both files, no sliding window', async () => {
    const { model, chat } = await readHfFolder(qwen2.dir);
    const c = model.config;
    const s = qwen2.tokenizer.special;
    expect([c.family, c.qkvBias, c.tiedEmbeddings, c.ropeTheta]).toEqual(['qwen2', true, true, 1000000]);
    expect(endTokenIds(c)).toEqual([s['<|im_end|>'], s['<|endoftext|>']]);
    expect(chat?.bosToken).toBeUndefined();
    expect(model.weights.layers[0].bq?.length).toBe(32);
    expect(model.weights.layers[0].bk?.length).toBe(16);
  });

  it('ORT graph = float64 reference, and the biases change the result', async () => {
    const { model } = await readHfFolder(qwen2.dir);
    const tokens = tokensOf(20, qwen2.tokenizer.size, 2);
    const ref = referenceForward(model, tokens).logits;
    const ort = await ortLogits(model, tokens);
    expect(maxRowErr(ort, ref, 0, model.config.vocabSize)).toBeLessThan(1e-4);
    const layers = model.weights.layers.map(({ bq, bk, bv, ...rest }) => rest);
    const unbiased = referenceForward({ ...model, weights: { ...model.weights, layers } }, tokens).logits;
    expect(relErr(ref[5], unbiased[5])).toBeGreaterThan(1e-2);
  });
});

describe('Mistral', () => {
  it('sliding_window null: read (untied) and ORT = reference; a shorter window is refused unless served within it', async () => {
    const tok = llama2cToHfJson(await readLlama2cTokenizer(TOK512));
    const m = await writeMistralFolder(at('mistral'), tok, 512);
    const { model } = await readHfFolder(m.dir);
    expect([model.config.family, model.config.tiedEmbeddings, endTokenIds(model.config)]).toEqual([
      'mistral',
      false,
      [2],
    ]);
    const tokens = tokensOf(12, 512, 3);
    const ort = await ortLogits(model, tokens);
    expect(maxRowErr(ort, referenceForward(model, tokens).logits, 0, 512)).toBeLessThan(1e-4);

    const w = await writeMistralFolder(at('mistral-swa'), tok, 512, 16);
    await expect(readHfFolder(w.dir)).rejects.toThrow(
      /sliding_window 16 is shorter than the served context of 64 positions.*--max-seq-len 16/,
    );
    expect((await readHfFolder(w.dir, { maxSeqLen: 16 })).model.config.maxSeqLen).toBe(16);
  });
});

describe('rope_scaling linear and dynamic; refusals', () => {
  async function withConfig(name: string, patch: Record<string, unknown>): Promise<string> {
    const dir = at(name);
    await writeLlama3Folder(dir);
    const file = path.join(dir, 'config.json');
    const cfg = JSON.parse(await readFile(file, 'utf8'));
    await writeFile(file, JSON.stringify({ ...cfg, ...patch }));
    return dir;
  }

  it('linear divides every inverse frequency by the factor', async () => {
    const dir = await withConfig('linear', { rope_scaling: { type: 'linear', factor: 2.0 } });
    const { model } = await readHfFolder(dir);
    expect(model.config.ropeScaling).toEqual({ type: 'linear', factor: 2 });
    const plain = ropeInvFreq({ ...model.config, ropeScaling: undefined });
    expect(Array.from(ropeInvFreq(model.config))).toEqual(Array.from(plain, (v) => Math.fround(v / 2)));
    const tokens = tokensOf(30, 200, 4);
    const ort = await ortLogits(model, tokens);
    expect(maxRowErr(ort, referenceForward(model, tokens).logits, 0, model.config.vocabSize)).toBeLessThan(
      1e-4,
    );
  });

  it('dynamic is plain RoPE within max_position_embeddings and is not served beyond it', async () => {
    const dir = await withConfig('dynamic', { rope_scaling: { rope_type: 'dynamic', factor: 2.0 } });
    const { model } = await readHfFolder(dir);
    expect(model.config.ropeScaling).toEqual({ type: 'dynamic', factor: 2, maxPositionEmbeddings: 256 });
    const plain = ropeTables({ ...model.config, ropeScaling: undefined }, 256);
    expect(ropeTables(model.config, 256).cos).toEqual(plain.cos);
    expect(() => ropeTables(model.config, 257)).toThrow(/dynamic.*within max_position_embeddings = 256/);
  });

  it('refuses what it cannot run, naming the field and value', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ model_type: 'gemma', architectures: ['GemmaForCausalLM'] }, /model_type 'gemma'/],
      [{ rope_scaling: { rope_type: 'yarn', factor: 4.0 } }, /rope_scaling type 'yarn'/],
      [
        { rope_scaling: { rope_type: 'linear', factor: 2.0, beta_fast: 32 } },
        /rope_scaling field 'beta_fast'/,
      ],
      [{ attention_bias: true }, /attention_bias = true/],
      [{ hidden_act: 'gelu' }, /hidden_act 'gelu'/],
      [
        { architectures: ['MistralForCausalLM'] },
        /architectures\[0\] 'MistralForCausalLM' with model_type 'llama'/,
      ],
    ];
    for (const [i, [patch, message]] of cases.entries()) {
      await expect(readHfFolder(await withConfig(`bad-${i}`, patch))).rejects.toThrow(message);
    }
  });
});

describe('packages: BOS, eos, chat template', () => {
  it('Llama 3: BOS added once, the chat template and eos ids stored; Qwen2: no BOS', async () => {
    const l3 = await readHfFolder(llama3.dir);
    await writePackage(at('pkg-llama3'), l3.model, l3.tokenizerJsonPath!, { chat: l3.chat });
    const p3 = await loadPackage(at('pkg-llama3'));
    const bos = llama3.tokenizer.special['<|begin_of_text|>'];
    expect(p3.manifest.tokenizer.addBos).toBe(true);
    expect(p3.manifest.chat?.template).toContain('<|start_header_id|>');
    expect(p3.tokenizer.encodePrompt('hi')[0]).toBe(bos);
    const templated = p3.tokenizer.encodePrompt(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi',
    );
    expect(templated.filter((id) => id === bos)).toHaveLength(1);
    const user = p3.tokenizer.encode('user');
    expect(templated.slice(0, 3 + user.length)).toEqual([
      bos,
      llama3.tokenizer.special['<|start_header_id|>'],
      ...user,
      llama3.tokenizer.special['<|end_header_id|>'],
    ]);

    const q = await readHfFolder(qwen2.dir);
    await writePackage(at('pkg-qwen2'), q.model, q.tokenizerJsonPath!, { chat: q.chat });
    const pq = await loadPackage(at('pkg-qwen2'));
    expect(pq.manifest.tokenizer.addBos).toBe(false);
    expect(pq.tokenizer.encodePrompt('hi')).toEqual(pq.tokenizer.encode('hi'));
  });

  it('generation stops on any eos id, never on BOS, and special tokens stay out of the text', async () => {
    const q = await readHfFolder(llama3.dir);
    const s = llama3.tokenizer.special;
    const tokenizer = (await loadPackage(at('pkg-llama3'))).tokenizer;
    const scripted = (ids: number[]): Decoder => ({
      name: 'ar',
      async *decode(req) {
        for (const id of ids) yield [id];
        return startStats(req, 'ar');
      },
      async close() {},
    });
    const hi = tokenizer.encode(' hi');
    const run = (ids: number[]) =>
      runGeneration(
        scripted(ids),
        tokenizer,
        Int32Array.of(s['<|begin_of_text|>']),
        { maxTokens: 20 },
        undefined,
        endTokenIds(q.model.config),
      );
    const a = await run([...hi, s['<|begin_of_text|>'], ...hi, s['<|eom_id|>'], ...hi]);
    expect(a.finishReason).toBe('stop');
    expect(a.tokens).toEqual([...hi, s['<|begin_of_text|>'], ...hi]);
    expect(a.text).toBe(' hi hi'); // BOS generated mid-text is a special token: no text
    const b = await run([...hi, s['<|eot_id|>']]);
    expect([b.finishReason, b.tokens]).toEqual(['stop', hi]);
    const c = await run([...hi, s['<|end_of_text|>']]);
    expect([c.finishReason, c.tokens]).toEqual(['stop', hi]);
  });
});

describe('GGUF of these families', () => {
  /** The folder's byte-level tokenizer as tokenizer.ggml.* values, padded to the model's vocabulary. */
  function vocabOf(f: FamilyFolder, model: LlamaModel, pre: string, addBos: boolean) {
    const json = f.tokenizer.json as { model: { vocab: Record<string, number>; merges: string[] } };
    const tokens = Object.keys(json.model.vocab);
    const types = tokens.map(() => 1);
    for (const name of Object.keys(f.tokenizer.special))
      [tokens.length, types.length] = [tokens.push(name), types.push(3)];
    while (tokens.length < model.config.vocabSize) {
      tokens.push(`<|reserved_special_token_${tokens.length}|>`);
      types.push(3);
    }
    return {
      model: 'gpt2' as const,
      tokens,
      tokenTypes: Int32Array.from(types),
      merges: json.model.merges,
      pre,
      bosId: model.config.bosId,
      eosId: model.config.eosId,
      addBos,
    };
  }

  it('Llama 3 (llama3 scaling as rope_freqs, head_dim, eos/eot/eom) and Qwen2 (biases) carry the same config', async () => {
    for (const [f, pre, addBos, template] of [
      [llama3, 'llama-bpe', true, LLAMA3_TEMPLATE],
      [qwen2, 'qwen2', false, QWEN2_TEMPLATE],
    ] as const) {
      const { model } = await readHfFolder(f.dir);
      const file = at(`${pre}.gguf`);
      await writeGgufLlama(file, model, vocabOf(f, model, pre, addBos), {
        type: 'f32',
        chatTemplate: template,
      });
      const back = await readGgufLlama(file);
      expectSameWeights(back.model, model);
      expect(back.model.config.eosIds).toEqual(model.config.eosIds);
      expect(back.metadata.architecture).toBe(pre === 'qwen2' ? 'qwen2' : 'llama');
      expect(back.chat?.template).toBe(template);
      expect(back.addBos).toBe(addBos);
      const tokens = tokensOf(80, f.tokenizer.size, 5);
      const a = referenceForward(back.model, tokens).logits;
      const b = referenceForward(model, tokens).logits;
      a.forEach((r, t) => {
        expect(r).toEqual(b[t]);
      });
    }
  });
});
