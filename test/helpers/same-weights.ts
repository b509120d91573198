import { expect } from 'vitest';
import { modelToHfTensors } from '../../workers/engine/src/formats/hf-llama';
import { endTokenIds, type LlamaConfig, type LlamaModel } from '../../workers/engine/src/model/llama';
import { dense } from '../../workers/engine/src/model/matrix';

const bytes = (a: ArrayBufferView): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** The config with its end ids spelled out (a llama2.c config's default [EOS, BOS] reads back as a list). */
const explicitEnds = (c: LlamaConfig): LlamaConfig => ({ ...c, eosIds: endTokenIds(c) });

/** Same config and every tensor (classifier included) equal bit for bit. */
export function expectSameWeights(a: LlamaModel, b: LlamaModel): void {
  expect(explicitEnds(a.config)).toEqual(explicitEnds(b.config));
  const ta = modelToHfTensors(a);
  const tb = modelToHfTensors(b);
  expect(ta.map(([name]) => name)).toEqual(tb.map(([name]) => name));
  ta.forEach(([name, t], i) => {
    expect(tb[i][1].shape, name).toEqual(t.shape);
    expect(tb[i][1].dtype, name).toEqual(t.dtype);
    expect(bytes(t.data).equals(bytes(tb[i][1].data)), name).toBe(true);
  });
  expect(bytes(dense(a.weights.classifier)).equals(bytes(dense(b.weights.classifier))), 'classifier').toBe(
    true,
  );
}
