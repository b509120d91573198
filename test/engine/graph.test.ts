/** The protobuf writer, the graph-builder DSL and the stage graph's interface. */
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import {
  buildStageGraph,
  buildStageModel,
  GraphBuilder,
  IO,
  layerIO,
  Message,
  ropeTables,
  validateStageSpec,
} from '../../workers/engine/src/graph';
import { dense, type Matrix } from '../../workers/engine/src/model/matrix';
import { llamaConfig, randomLlama } from '../../workers/engine/src/model/random';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('protobuf writer', () => {
  it('encodes varints, negative int64, strings, floats, bytes and nested messages', () => {
    expect(hex(new Message().varint(1, 150).encode())).toBe('089601');
    expect(hex(new Message().varint(1, -1).encode())).toBe('08ffffffffffffffffff01');
    expect(hex(new Message().varint(3, 9223372036854775807n).encode())).toBe('18ffffffffffffffff7f');
    expect(hex(new Message().string(2, 'testing').encode())).toBe('120774657374696e67');
    expect(hex(new Message().float(2, 1).encode())).toBe('150000803f');
    expect(hex(new Message().bytes(9, Uint8Array.of(1, 2, 3)).encode())).toBe('4a03010203');
    expect(hex(new Message().message(3, new Message().varint(1, 150)).encode())).toBe('1a03089601');
    // a length prefix longer than one byte, and a large field number
    const big = new Message().bytes(20, new Uint8Array(300)).encode();
    expect(hex(big.subarray(0, 4))).toBe('a201ac02');
    expect(big.length).toBe(4 + 300);
  });
});

describe('graph builder', () => {
  it('builds a runnable model: Gemm with transposed weight, renamed and duplicated outputs', async () => {
    const g = new GraphBuilder('tiny');
    const x = g.input('x', 'float32', ['N', 3]);
    const w = g.weight('w', Float32Array.of(1, 2, 3, 4, 5, 6), [2, 3]); // [out=2, in=3]
    const y = g.linear(x, w); // [N, 2]
    const z = g.add(y, g.f32(1));
    g.output('y', y, 'float32', ['N', 2]);
    g.output('z', z, 'float32', ['N', 2]);
    g.output('y_again', y, 'float32', ['N', 2]); // second output of the same tensor -> Identity
    g.output('x_copy', x, 'float32', ['N', 3]); // a graph input as output -> Identity
    const s = await InferenceSession.create(g.toBytes());
    const r = await s.run({ x: new Tensor('float32', Float32Array.of(1, 0, 0, 0, 1, 1), [2, 3]) });
    expect(Array.from(r.y.data as Float32Array)).toEqual([1, 4, 5, 11]);
    expect(Array.from(r.z.data as Float32Array)).toEqual([2, 5, 6, 12]);
    expect(Array.from(r.y_again.data as Float32Array)).toEqual([1, 4, 5, 11]);
    expect(r.x_copy.dims).toEqual([2, 3]);
    await s.release();
  });

  it('rope tables use the HF rotate_half layout with float32 angles (llama2.c)', () => {
    const { cos, sin } = ropeTables({ dim: 8, nHeads: 2, ropeTheta: 10000 }, 3);
    // head size 4: frequencies 1 and 1/100; columns i and i+2 share a frequency
    expect(cos[4 * 2 + 0]).toBeCloseTo(Math.cos(2), 12);
    expect(cos[4 * 2 + 2]).toBe(cos[4 * 2 + 0]);
    expect(sin[4 * 2 + 1]).toBeCloseTo(Math.sin(Math.fround(2 * Math.fround(0.01))), 12);
    expect(sin[4 * 2 + 3]).toBe(sin[4 * 2 + 1]);
    expect(() => ropeTables({ dim: 10, nHeads: 2, ropeTheta: 10000 }, 3)).toThrow(/even/);
  });
});

describe('stage graph', () => {
  const config = llamaConfig({
    dim: 16,
    nLayers: 3,
    nHeads: 4,
    nKvHeads: 2,
    hiddenDim: 24,
    vocabSize: 40,
    maxSeqLen: 8,
  });
  const tied = randomLlama(config, 1);
  const untied = randomLlama({ ...config, tiedEmbeddings: false }, 1);

  it('writes every weight once (tied embeddings share one initializer)', () => {
    const floats = (m: typeof tied, first: number, end: number, cls: boolean) => {
      let n = 0;
      for (let l = first; l < end; l++)
        for (const w of Object.values(m.weights.layers[l]))
          n += w instanceof Float32Array ? w.length : w.rows * w.cols;
      const size = (w: Matrix) => w.rows * w.cols;
      if (first === 0) n += size(m.weights.tokenEmbedding);
      if (cls && (first !== 0 || m.weights.classifier !== m.weights.tokenEmbedding))
        n += size(m.weights.classifier);
      if (cls) n += m.weights.finalNorm.length;
      return n + 2 * 8 * 4; // + rope tables [maxSeq, hd]
    };
    const overhead = (bytes: Uint8Array, nFloats: number) => bytes.length - 4 * nFloats;
    for (const m of [tied, untied]) {
      const whole = buildStageGraph(m, { firstLayer: 0, endLayer: 3 });
      const o = overhead(whole, floats(m, 0, 3, true));
      expect(o).toBeGreaterThan(0);
      expect(o).toBeLessThan(16_000); // nodes, names and shapes only
      expect(
        overhead(buildStageGraph(m, { firstLayer: 1, endLayer: 2 }), floats(m, 1, 2, false)),
      ).toBeLessThan(8_000);
    }
  });

  it('has the documented inputs and outputs for first, middle, last and exit stages', async () => {
    const io = async (spec: Parameters<typeof buildStageGraph>[1], kvCache?: 'host' | 'device') => {
      const s = await InferenceSession.create(buildStageGraph(untied, spec, { kvCache }));
      const names = { inputs: [...s.inputNames].sort(), outputs: [...s.outputNames].sort() };
      await s.release();
      return names;
    };
    // one past input per layer of the stage, named by the stage-local index
    const past = (L: number) =>
      Array.from({ length: L }, (_, j) => [layerIO(IO.pastK, j), layerIO(IO.pastV, j)]).flat();
    const present = (L: number) =>
      Array.from({ length: L }, (_, j) => [layerIO(IO.presentK, j), layerIO(IO.presentV, j)]).flat();
    expect(await io({ firstLayer: 0, endLayer: 1 })).toEqual({
      inputs: [...past(1), IO.positions, IO.tokens].sort(),
      outputs: [IO.hidden, IO.newK, IO.newV].sort(),
    });
    expect(await io({ firstLayer: 1, endLayer: 2 })).toEqual({
      inputs: [IO.hiddenIn, ...past(1), IO.positions].sort(),
      outputs: [IO.hidden, IO.newK, IO.newV].sort(),
    });
    expect(await io({ firstLayer: 1, endLayer: 3 })).toEqual({
      inputs: [IO.hiddenIn, IO.logitRows, ...past(2), IO.positions].sort(),
      outputs: [IO.logits, IO.newK, IO.newV].sort(),
    });
    expect(
      await io({ firstLayer: 0, endLayer: 2, exit: { afterLayer: 2 }, skip: { attention: [0, 1], mlp: [] } }),
    ).toEqual({
      inputs: [IO.logitRows, ...past(2), IO.positions, IO.tokens].sort(),
      outputs: [IO.exitHidden, IO.exitLogits, IO.hidden, IO.newK, IO.newV].sort(),
    });
    // device-resident cache: past_len and per-layer past in, per-layer present out
    expect(await io({ firstLayer: 1, endLayer: 3 }, 'device')).toEqual({
      inputs: [IO.hiddenIn, IO.logitRows, ...past(2), IO.pastLen, IO.positions].sort(),
      outputs: [IO.logits, ...present(2)].sort(),
    });
  });

  it('external weights: the graph bytes hold no weights, and the session matches the inline model', async () => {
    const spec = { firstLayer: 0, endLayer: 3 };
    const inline = buildStageGraph(untied, spec);
    const ext = buildStageModel(untied, spec);
    const external = ext.externalData.reduce((n, d) => n + d.data.byteLength, 0);
    expect(external).toBeGreaterThan(0.5 * inline.length); // every weight of 1 KiB or more moved out
    expect(Math.abs(ext.bytes.length + external - inline.length)).toBeLessThan(16_000);
    // the external entries are views of the model's own arrays (no copy; q/k/v and gate/up are stacked
    // into one projection each, which is one copy made once per model)
    const wo = dense(untied.weights.layers[0].wo);
    const e = ext.externalData.find((d) => d.path === 'l0.wo.bin')!;
    expect(e.data.buffer).toBe(wo.buffer);
    expect(e.data.byteLength).toBe(wo.byteLength);
    expect(ext.externalData.some((d) => d.path === 'l0.wqkv.bin')).toBe(true);
    const feeds = {
      tokens: new Tensor('int64', BigInt64Array.of(3n, 7n), [2]),
      positions: new Tensor('int64', BigInt64Array.of(0n, 1n), [2]),
      logit_rows: new Tensor('int64', BigInt64Array.of(2n), [1]),
      ...Object.fromEntries(
        Array.from({ length: 3 }, (_, j) => [IO.pastK, IO.pastV].map((n) => layerIO(n, j)))
          .flat()
          .map((n) => [n, new Tensor('float32', new Float32Array(8), [1, 2, 4])]),
      ),
    };
    const a = await InferenceSession.create(inline);
    const b = await InferenceSession.create(ext.bytes, { externalData: ext.externalData });
    const ra = await a.run(feeds);
    const rb = await b.run(feeds);
    expect(Array.from(rb.logits.data as Float32Array)).toEqual(Array.from(ra.logits.data as Float32Array));
    await a.release();
    await b.release();
  });

  it('rejects invalid stage specs', () => {
    expect(() => validateStageSpec({ firstLayer: 2, endLayer: 2 }, 3)).toThrow(
      /invalid stage layers \[2, 2\)/,
    );
    expect(() => validateStageSpec({ firstLayer: 0, endLayer: 4 }, 3)).toThrow(/3-layer model/);
    expect(() => validateStageSpec({ firstLayer: 1, endLayer: 2, exit: { afterLayer: 3 } }, 3)).toThrow(
      /exit after layer 3/,
    );
    expect(() => buildStageGraph(tied, { firstLayer: 0, endLayer: 1, exit: { afterLayer: 2 } })).toThrow(
      /outside/,
    );
    expect(() =>
      buildStageGraph(randomLlama({ ...config, nKvHeads: 3 }, 1), { firstLayer: 0, endLayer: 1 }),
    ).toThrow(/multiple/);
  });
});

describe('randomLlama', () => {
  it('is deterministic in its seed, with realistic statistics', () => {
    const c = llamaConfig({ dim: 64, nLayers: 2, nHeads: 4, vocabSize: 100, tiedEmbeddings: false });
    const a = randomLlama(c, 42);
    const b = randomLlama(c, 42);
    const d = randomLlama(c, 43);
    expect(a.weights.layers[1].w2).toEqual(b.weights.layers[1].w2);
    expect(a.weights.layers[1].w2).not.toEqual(d.weights.layers[1].w2);
    expect(a.weights.classifier).not.toBe(a.weights.tokenEmbedding);
    const wq = dense(a.weights.layers[0].wq);
    const mean = wq.reduce((s, x) => s + x, 0) / wq.length;
    const std = Math.sqrt(wq.reduce((s, x) => s + (x - mean) ** 2, 0) / wq.length);
    expect(Math.abs(mean)).toBeLessThan(0.002);
    expect(std).toBeGreaterThan(0.019);
    expect(std).toBeLessThan(0.021);
    const norm = a.weights.layers[0].attnNorm;
    expect(Math.min(...norm)).toBeGreaterThan(0.9);
    expect(Math.max(...norm)).toBeLessThan(1.1);
    const tiedModel = randomLlama({ ...c, tiedEmbeddings: true }, 1);
    expect(tiedModel.weights.classifier).toBe(tiedModel.weights.tokenEmbedding);
  });
});
