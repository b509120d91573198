/**
 * Weight formats end to end through the real CLI: `ppsd import --dtype`, `ppsd quantize`,
 * `ppsd export-gguf` and `ppsd import --from X.gguf`, and the stories260K GGUF with Q8_0 blocks generating
 * exactly the greedy text the float64 reference produces on its dequantized weights.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDecoder } from '../../workers/engine/src/decode/index';
import { readGgufHeader } from '../../workers/engine/src/formats/gguf';
import { modelMatrices } from '../../workers/engine/src/model/llama';
import { dense } from '../../workers/engine/src/model/matrix';
import { referenceForward } from '../../workers/engine/src/model/reference';
import { loadPackage, readManifest } from '../../workers/engine/src/package';
import { runPpsd, STORIES260K, scratchDir, TOK512 } from '../helpers/shared';
import { generate } from './decoder-helpers';

const ppsd = runPpsd;

let scratch: Awaited<ReturnType<typeof scratchDir>>;
const at = (name: string) => path.join(scratch.dir, name);

beforeAll(async () => {
  scratch = await scratchDir('ppsd-formats-cli-');
  const r = await ppsd('import', '--from', STORIES260K, '--tokenizer', TOK512, '--out', at('f32'), '--quiet');
  expect(r.code, r.stderr).toBe(0);
});
afterAll(async () => scratch?.cleanup());

/** Greedy from BOS with the float64 reference on the model's (dequantized) weights. */
function referenceGreedy(model: Parameters<typeof referenceForward>[0], n: number): number[] {
  const tokens = [model.config.bosId];
  for (let i = 0; i < n; i++) {
    const logits = referenceForward(model, tokens).logits.at(-1)!;
    let best = 0;
    for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
    tokens.push(best);
  }
  return tokens.slice(1);
}

describe('weight formats through the CLI', () => {
  it('import --dtype q4 and quantize --dtype q8 record per-tensor dtypes; w2 (172 inputs) keeps f32', async () => {
    const a = await ppsd(
      'import',
      '--from',
      STORIES260K,
      '--tokenizer',
      TOK512,
      '--out',
      at('q4'),
      '--dtype',
      'q4',
      '--quiet',
    );
    expect(a.code, a.stderr).toBe(0);
    const b = await ppsd('quantize', at('f32'), '--dtype', 'q8', '--out', at('q8'));
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toMatch(/5 matrices kept a wider dtype \(model\.layers\.0\.mlp\.down_proj\.weight: f32/);
    for (const [dir, dtype] of [
      ['q4', 'q4'],
      ['q8', 'q8'],
    ] as const) {
      const m = await readManifest(at(dir));
      expect(m.dtype).toBe(dtype);
      expect(m.tensors?.['model.layers.2.self_attn.v_proj.weight']).toEqual({ dtype, blockSize: 32 });
      expect(m.tensors?.['model.layers.2.mlp.down_proj.weight']).toEqual({ dtype: 'f32' });
    }
    expect((await ppsd('quantize', at('f32'), '--dtype', 'q3', '--out', at('bad'))).stderr).toMatch(
      /--dtype must be one of f32, f16, bf16, q8, q4/,
    );
  });

  it('export-gguf writes Q8_0 blocks (F32 where a row is too short) that import back exactly', async () => {
    const e = await ppsd('export-gguf', at('q8'), '--type', 'q8_0', '--out', at('s.q8_0.gguf'));
    expect(e.code, e.stderr).toBe(0);
    const header = await readGgufHeader(at('s.q8_0.gguf'));
    const types = new Map(header.tensors.map((t) => [t.name, t.typeName]));
    expect(types.get('blk.0.attn_q.weight')).toBe('Q8_0');
    expect(types.get('blk.0.ffn_down.weight')).toBe('F32'); // 172 inputs: no 32-blocking
    const i = await ppsd('import', '--from', at('s.q8_0.gguf'), '--out', at('from-gguf'), '--quiet');
    expect(i.code, i.stderr).toBe(0);
    const [src, back] = [(await loadPackage(at('q8'))).model, (await loadPackage(at('from-gguf'))).model];
    expect((await readManifest(at('from-gguf'))).dtype).toBe('q8');
    modelMatrices(src.weights).forEach(({ name, matrix }, k) => {
      const got = modelMatrices(back.weights)[k].matrix;
      expect(got.dtype, name).toBe(matrix.dtype);
      expect(Buffer.from(dense(got).buffer).equals(Buffer.from(dense(matrix).buffer)), name).toBe(true);
    });
  });

  it('the stories260K Q8_0 GGUF generates the greedy text of the float64 reference on its weights', async () => {
    const pkg = await loadPackage(at('from-gguf'));
    const n = 48;
    const want = referenceGreedy(pkg.model, n);
    for (const level of [0, 4] as const) {
      const ar = await createDecoder('ar', { model: pkg.model, accuracyLevel: level });
      try {
        const got = (await generate(ar, [pkg.model.config.bosId], n)).tokens;
        expect(got, `accuracy_level ${level}`).toEqual(want);
      } finally {
        await ar.close();
      }
    }
    expect(pkg.tokenizer.decode(want)).toMatch(/^Once upon a time/);
  });

  it('refuses a GGUF of another architecture, naming it', async () => {
    const { writeGguf, gguf } = await import('../../workers/engine/src/formats/gguf');
    await writeGguf(at('gpt.gguf'), {
      metadata: [['general.architecture', gguf.string('gpt2')]],
      tensors: [],
    });
    const r = await ppsd('import', '--from', at('gpt.gguf'), '--out', at('gpt'));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/architecture 'gpt2' is not supported/);
  });
});
