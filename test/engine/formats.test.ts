import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readHfFolder, writeHfFolder } from '../../workers/engine/src/formats/hf';
import { interleavedToRotateHalf, readLlama2c } from '../../workers/engine/src/formats/llama2c';
import {
  readSafetensors,
  readSafetensorsHeader,
  type Tensor,
  writeSafetensors,
} from '../../workers/engine/src/formats/safetensors';
import { headDim, type LlamaModel } from '../../workers/engine/src/model/llama';
import { dense } from '../../workers/engine/src/model/matrix';
import { createReferenceStage, referenceForward } from '../../workers/engine/src/model/reference';
import { readLlama2cTokenizer } from '../../workers/engine/src/tokenizer/llama2c';
import { distinctClassifier, legacySections, toLegacyUntied, toVersion1 } from '../helpers/llama2c-files';
import { expectSameWeights } from '../helpers/same-weights';
import { EXPECTED_GREEDY_200, STORIES260K, scratchDir, TOK512 } from '../helpers/shared';

let scratch: Awaited<ReturnType<typeof scratchDir>>;
let legacyBytes: Buffer;
let stories: LlamaModel;

beforeAll(async () => {
  scratch = await scratchDir('ppsd-formats-');
  legacyBytes = await readFile(STORIES260K);
  stories = await readLlama2c(STORIES260K);
});
afterAll(() => scratch.cleanup());

const f32 = (b: Buffer): Float32Array =>
  new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
const at = (name: string) => path.join(scratch.dir, name);

describe('llama2.c checkpoints', () => {
  it('reads stories260K (legacy) with its real shape and a tied classifier', () => {
    expect(stories.config).toEqual({
      dim: 64,
      hiddenDim: 172,
      nLayers: 5,
      nHeads: 8,
      nKvHeads: 4,
      vocabSize: 512,
      maxSeqLen: 512,
      normEps: 1e-5,
      ropeTheta: 10000,
      tiedEmbeddings: true,
      bosId: 1,
      eosId: 2,
    });
    expect(stories.weights.classifier).toBe(stories.weights.tokenEmbedding);
    const { parts } = legacySections(legacyBytes);
    expect(dense(stories.weights.tokenEmbedding)).toEqual(f32(parts.emb));
    const c = stories.config;
    const kvSize = c.nKvHeads * headDim(c) * c.dim;
    // wv is stored as-is; wq and wk have their rows permuted within each head.
    expect(dense(stories.weights.layers[2].wv)).toEqual(f32(parts.wv).subarray(2 * kvSize, 3 * kvSize));
    const rawWq1 = f32(parts.wq).subarray(c.dim * c.dim, 2 * c.dim * c.dim);
    expect(dense(stories.weights.layers[1].wq)).toEqual(
      interleavedToRotateHalf(rawWq1, c.nHeads, headDim(c), c.dim),
    );
    expect(stories.weights.finalNorm).toEqual(f32(parts.rmsFinal));
  });

  it('permutes interleaved rotary pairs into rotate_half order, per head', () => {
    // 2 heads of size 4, one column: rows (per head) 0,1,2,3 -> 0,2,1,3
    const w = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
    expect(Array.from(interleavedToRotateHalf(w, 2, 4, 1))).toEqual([0, 2, 1, 3, 10, 12, 11, 13]);
  });

  it('reproduces llama2.c: 200 greedy tokens from BOS decode to the reference text', async () => {
    const tokenizer = await readLlama2cTokenizer(TOK512);
    const stage = createReferenceStage(stories, { firstLayer: 0, endLayer: stories.config.nLayers });
    const text = tokenizer.createStreamDecoder(tokenizer.bosId);
    let out = '';
    let token = tokenizer.bosId;
    for (let pos = 0; pos < 200; pos++) {
      const { logits } = await stage.forward({ tokens: Int32Array.of(token) });
      let next = 0;
      for (let i = 1; i < logits!.length; i++) if (logits![i] > logits![next]) next = i;
      if (next === tokenizer.bosId) break; // llama2.c ends the story at BOS
      out += text.push(next);
      token = next;
    }
    out += text.flush();
    expect(out).toBe(await readFile(EXPECTED_GREEDY_200, 'utf8'));
  });

  it('reads the version 1 format into the same model', async () => {
    await writeFile(at('v1.bin'), toVersion1(legacyBytes));
    expectSameWeights(await readLlama2c(at('v1.bin')), stories);
  });

  it('reads untied classifiers in both formats', async () => {
    const classifier = distinctClassifier(legacySections(legacyBytes).parts.emb);
    await writeFile(at('legacy-untied.bin'), toLegacyUntied(legacyBytes, classifier));
    await writeFile(at('v1-untied.bin'), toVersion1(legacyBytes, classifier));
    const legacy = await readLlama2c(at('legacy-untied.bin'));
    const v1 = await readLlama2c(at('v1-untied.bin'));
    for (const m of [legacy, v1]) {
      expect(m.config.tiedEmbeddings).toBe(false);
      expect(dense(m.weights.classifier)).toEqual(f32(classifier));
      expect(m.weights.tokenEmbedding).toEqual(stories.weights.tokenEmbedding);
    }
    expectSameWeights(legacy, v1);
  });

  it('refuses truncated, oversized and unsupported files with the expected and actual sizes', async () => {
    await writeFile(at('short.bin'), legacyBytes.subarray(0, legacyBytes.length - 4));
    await expect(readLlama2c(at('short.bin'))).rejects.toThrow(
      /truncated .*expected 1056540 bytes, file has 1056536/,
    );
    await writeFile(at('long.bin'), Buffer.concat([legacyBytes, Buffer.alloc(8)]));
    await expect(readLlama2c(at('long.bin'))).rejects.toThrow(
      /oversized .*expected 1056540 bytes, file has 1056548/,
    );
    const v1 = toVersion1(legacyBytes);
    await writeFile(at('v1-short.bin'), v1.subarray(0, v1.length - 1));
    await expect(readLlama2c(at('v1-short.bin'))).rejects.toThrow(/truncated .*version 1/);
    const v2 = Buffer.from(v1);
    v2.writeInt32LE(2, 4);
    await writeFile(at('v2.bin'), v2);
    await expect(readLlama2c(at('v2.bin'))).rejects.toThrow(/version 2 is not supported/);
    await writeFile(at('tiny.bin'), Buffer.alloc(10));
    await expect(readLlama2c(at('tiny.bin'))).rejects.toThrow(/too small/);
    await writeFile(at('garbage.bin'), Buffer.alloc(4096, 0xff));
    await expect(readLlama2c(at('garbage.bin'))).rejects.toThrow(/not a llama2.c checkpoint/);
  });
});

describe('safetensors', () => {
  const tensors: [string, Tensor][] = [
    ['a', { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, -6.5]) }],
    ['b.weight', { shape: [1], data: Float32Array.from([Math.PI]) }],
    ['empty', { shape: [0, 4], data: new Float32Array(0) }],
  ];

  it('round-trips float32 tensors and metadata, and reports the file hash', async () => {
    const file = at('rt.safetensors');
    const written = await writeSafetensors(file, tensors, { metadata: { format: 'pt' } });
    const bytes = await readFile(file);
    expect(written.bytes).toBe(bytes.length);
    expect(written.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
    expect(Number(bytes.readBigUInt64LE(0)) % 8).toBe(0); // data section aligned
    const { tensors: back, metadata } = await readSafetensors(file);
    expect(metadata).toEqual({ format: 'pt' });
    expect([...back.keys()]).toEqual(['a', 'b.weight', 'empty']);
    for (const [name, t] of tensors) {
      expect(back.get(name)?.shape).toEqual(t.shape);
      expect(back.get(name)?.data).toEqual(t.data);
    }
    const only = await readSafetensors(file, { names: ['b.weight'] });
    expect([...only.tensors.keys()]).toEqual(['b.weight']);
  });

  it('converts F16 and BF16 to float32 exactly', async () => {
    const f16Bits = [0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x7c00, 0xfc00, 0x8000];
    const f16Values = [1, -2, 0.5, 65504, 2 ** -24, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -0];
    const bf16Source = Float32Array.from([1, -3.5, 1e30, -1e-30]);
    const bf16Bits = Array.from(new Uint32Array(bf16Source.buffer), (b) => b >>> 16);
    const header = {
      h: { dtype: 'F16', shape: [8], data_offsets: [0, 16] },
      g: { dtype: 'BF16', shape: [2, 2], data_offsets: [16, 24] },
    };
    await writeFile(
      at('half.safetensors'),
      rawSafetensors(header, Buffer.from(Uint16Array.from([...f16Bits, ...bf16Bits]).buffer)),
    );
    const { tensors: read } = await readSafetensors(at('half.safetensors'));
    expect(Array.from(read.get('h')!.data)).toEqual(f16Values);
    expect(read.get('g')!.shape).toEqual([2, 2]);
    // bf16 keeps the top 16 bits of the float32
    expect(Array.from(new Uint32Array(read.get('g')!.data.buffer))).toEqual(
      bf16Bits.map((b) => (b << 16) >>> 0),
    );
  });

  it('refuses corrupt or truncated files with a clear message', async () => {
    const good = await readFile(at('rt.safetensors'));
    const cases: [string, Buffer, RegExp][] = [
      ['short', good.subarray(0, 5), /less than the 8-byte header length/],
      [
        'truncated-data',
        good.subarray(0, good.length - 3),
        /need \d+ data bytes but the file has \d+ \(truncated\?\)/,
      ],
      ['trailing', Buffer.concat([good, Buffer.alloc(4)]), /trailing bytes/],
      ['huge-header', Buffer.concat([u64(1e12), Buffer.alloc(16)]), /implausible header length/],
      ['header-past-end', Buffer.concat([u64(1000), Buffer.from('{}')]), /runs past the end of the file/],
      ['not-json', rawSafetensors('{"a": [', Buffer.alloc(0)), /header is not JSON/],
      [
        'bad-dtype',
        rawSafetensors({ a: { dtype: 'F33', shape: [1], data_offsets: [0, 4] } }, Buffer.alloc(4)),
        /unknown dtype F33/,
      ],
      [
        'wrong-size',
        rawSafetensors({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, Buffer.alloc(4)),
        /needs 8 bytes, offsets span 4/,
      ],
      [
        'hole',
        rawSafetensors(
          {
            a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
            b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
          },
          Buffer.alloc(12),
        ),
        /hole or overlap/,
      ],
    ];
    for (const [name, bytes, message] of cases) {
      await writeFile(at(`${name}.safetensors`), bytes);
      await expect(readSafetensors(at(`${name}.safetensors`)), name).rejects.toThrow(message);
    }
    await writeFile(
      at('ints.safetensors'),
      rawSafetensors({ i: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, Buffer.alloc(8)),
    );
    await expect(readSafetensors(at('ints.safetensors'))).rejects.toThrow(
      /dtype I64; only F32, F16 and BF16/,
    );
    await expect(readSafetensors(at('rt.safetensors'), { names: ['nope'] })).rejects.toThrow(
      /has no tensor 'nope'/,
    );
  });
});

describe('Hugging Face folders', () => {
  it('writes stories260K as a HF folder and reads back the identical model, weights and logits', async () => {
    const dir = at('hf-stories');
    await writeHfFolder(stories, TOK512, dir);
    const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8'));
    expect(config).toMatchObject({
      architectures: ['LlamaForCausalLM'],
      hidden_size: 64,
      intermediate_size: 172,
      num_hidden_layers: 5,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      vocab_size: 512,
      max_position_embeddings: 512,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: true,
    });
    const header = await readSafetensorsHeader(path.join(dir, 'model.safetensors'));
    expect(header.tensors.has('model.layers.4.self_attn.q_proj.weight')).toBe(true);
    expect(header.tensors.has('model.layers.0.mlp.gate_proj.weight')).toBe(true);
    expect(header.tensors.has('lm_head.weight')).toBe(false); // tied
    expect(header.tensors.get('model.layers.0.self_attn.k_proj.weight')?.shape).toEqual([32, 64]);

    const { model, tokenizerJsonPath } = await readHfFolder(dir);
    expect(tokenizerJsonPath).toBe(path.join(dir, 'tokenizer.json'));
    expectSameWeights(model, stories);
    expect(model.weights.classifier).toBe(model.weights.tokenEmbedding);

    const tokens = [1, 403, 407, 261, 378, 9, 13, 287];
    const a = referenceForward(stories, tokens).logits;
    const b = referenceForward(model, tokens).logits;
    for (let i = 0; i < tokens.length; i++) expect(b[i]).toEqual(a[i]);
  });

  it('keeps an untied classifier as lm_head.weight', async () => {
    const classifier = distinctClassifier(legacySections(legacyBytes).parts.emb);
    await writeFile(at('untied.bin'), toLegacyUntied(legacyBytes, classifier));
    const untied = await readLlama2c(at('untied.bin'));
    const dir = at('hf-untied');
    await writeHfFolder(untied, TOK512, dir);
    expect(
      (await readSafetensorsHeader(path.join(dir, 'model.safetensors'))).tensors.has('lm_head.weight'),
    ).toBe(true);
    const { model } = await readHfFolder(dir);
    expect(model.config.tiedEmbeddings).toBe(false);
    expectSameWeights(model, untied);
  });

  it('reads sharded weights through model.safetensors.index.json', async () => {
    const dir = at('hf-sharded');
    await writeHfFolder(stories, TOK512, dir);
    const { tensors } = await readSafetensors(path.join(dir, 'model.safetensors'));
    const names = [...tensors.keys()];
    const half = Math.floor(names.length / 2);
    const shards = [names.slice(0, half), names.slice(half)];
    const weightMap: Record<string, string> = {};
    for (const [i, shard] of shards.entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      await writeSafetensors(
        path.join(dir, file),
        shard.map((n) => [n, tensors.get(n)!]),
      );
      for (const n of shard) weightMap[n] = file;
    }
    await writeFile(
      path.join(dir, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    // The index decides: the unsharded file left next to it is not read.
    await writeFile(path.join(dir, 'model.safetensors'), 'not read');
    expectSameWeights((await readHfFolder(dir)).model, stories);
  });

  it('refuses configs and tensors it does not implement, naming what is wrong', async () => {
    const dir = at('hf-bad');
    await writeHfFolder(stories, TOK512, dir);
    const configPath = path.join(dir, 'config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8'));
    await writeFile(
      configPath,
      JSON.stringify({ ...config, rope_scaling: { rope_type: 'yarn', factor: 8 } }),
    );
    await expect(readHfFolder(dir)).rejects.toThrow(/rope_scaling type 'yarn' is not implemented/);
    await writeFile(
      configPath,
      JSON.stringify({ ...config, rope_scaling: { rope_type: 'llama3', factor: 8 } }),
    );
    await expect(readHfFolder(dir)).rejects.toThrow(/rope_scaling.low_freq_factor must be a positive number/);
    await writeFile(
      configPath,
      JSON.stringify({ ...config, model_type: 'phi3', architectures: ['Phi3ForCausalLM'] }),
    );
    await expect(readHfFolder(dir)).rejects.toThrow(/model_type 'phi3'/);
    await writeFile(configPath, JSON.stringify({ ...config, num_hidden_layers: 6 }));
    await expect(readHfFolder(dir)).rejects.toThrow(/missing tensor 'model.layers.5.input_layernorm.weight'/);
    await writeFile(configPath, JSON.stringify({ ...config, intermediate_size: 100 }));
    await expect(readHfFolder(dir)).rejects.toThrow(
      /gate_proj.weight' has shape \[172,64\], expected \[100,64\]/,
    );
    await writeFile(configPath, JSON.stringify(config));
    const { tensors } = await readSafetensors(path.join(dir, 'model.safetensors'));
    tensors.set('model.layers.0.self_attn.q_proj.bias', { shape: [64], data: new Float32Array(64) });
    await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    await expect(readHfFolder(dir)).rejects.toThrow(
      /unexpected tensor 'model.layers.0.self_attn.q_proj.bias'/,
    );
    await expect(readHfFolder(at('nowhere'))).rejects.toThrow(/not a Hugging Face model folder/);
  });
});

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function rawSafetensors(header: object | string, data: Buffer): Buffer {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  return Buffer.concat([u64(json.length), json, data]);
}
