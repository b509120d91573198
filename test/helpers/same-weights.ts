import { expect } from 'vitest';
import { modelToHfTensors } from '../../workers/engine/src/formats/hf-llama';
import type { LlamaModel } from '../../workers/engine/src/model/llama';

const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Same config and every tensor (classifier included) equal bit for bit. */
export function expectSameWeights(a: LlamaModel, b: LlamaModel): void {
  expect(a.config).toEqual(b.config);
  const ta = modelToHfTensors(a);
  const tb = modelToHfTensors(b);
  expect(ta.map(([name]) => name)).toEqual(tb.map(([name]) => name));
  ta.forEach(([name, t], i) => {
    expect(tb[i][1].shape, name).toEqual(t.shape);
    expect(bytes(t.data).equals(bytes(tb[i][1].data)), name).toBe(true);
  });
  expect(bytes(a.weights.classifier).equals(bytes(b.weights.classifier)), 'classifier').toBe(true);
}
