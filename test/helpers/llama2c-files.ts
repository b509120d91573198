/**
 * Builds llama2.c checkpoint variants from a legacy file's bytes (for format tests): the version 1
 * layout, and an untied classifier appended in either layout.
 */
interface Sections {
  header: number[]; // dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
  parts: Record<string, Buffer>; // stacked over layers, raw fp32 bytes
}

const LEGACY_ORDER = [
  'emb',
  'rmsAtt',
  'wq',
  'wk',
  'wv',
  'wo',
  'rmsFfn',
  'w1',
  'w2',
  'w3',
  'rmsFinal',
  'freqs',
] as const;
const V1_ORDER = ['rmsAtt', 'rmsFfn', 'rmsFinal', 'emb', 'wq', 'wk', 'wv', 'wo', 'w1', 'w2', 'w3'] as const;

export function legacySections(legacy: Buffer): Sections {
  const header = Array.from({ length: 7 }, (_, i) => legacy.readInt32LE(4 * i));
  const [dim, hidden, L, heads, kvHeads, vocabSigned, seq] = header;
  const vocab = Math.abs(vocabSigned);
  const hd = dim / heads;
  const kvDim = kvHeads * hd;
  const floats: Record<(typeof LEGACY_ORDER)[number], number> = {
    emb: vocab * dim,
    rmsAtt: L * dim,
    wq: L * dim * dim,
    wk: L * kvDim * dim,
    wv: L * kvDim * dim,
    wo: L * dim * dim,
    rmsFfn: L * dim,
    w1: L * hidden * dim,
    w2: L * dim * hidden,
    w3: L * hidden * dim,
    rmsFinal: dim,
    freqs: seq * hd,
  };
  const parts: Record<string, Buffer> = {};
  let at = 28;
  for (const name of LEGACY_ORDER) {
    parts[name] = legacy.subarray(at, at + 4 * floats[name]);
    at += 4 * floats[name];
  }
  return { header, parts };
}

function int32s(values: number[]): Buffer {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => {
    b.writeInt32LE(v, 4 * i);
  });
  return b;
}

/** A classifier distinct from the embedding: the embedding scaled by -0.5. */
export function distinctClassifier(emb: Buffer): Buffer {
  const src = new Float32Array(emb.buffer.slice(emb.byteOffset, emb.byteOffset + emb.byteLength));
  return Buffer.from(src.map((v) => -0.5 * v).buffer);
}

export function toLegacyUntied(legacy: Buffer, classifier: Buffer): Buffer {
  const { header } = legacySections(legacy);
  const h = [...header];
  h[5] = -Math.abs(h[5]);
  return Buffer.concat([int32s(h), legacy.subarray(28), classifier]);
}

export function toVersion1(legacy: Buffer, classifier?: Buffer): Buffer {
  const { header, parts } = legacySections(legacy);
  const head = Buffer.alloc(256);
  head.writeUInt32LE(0x616b3432, 0);
  head.writeInt32LE(1, 4);
  int32s([...header.slice(0, 5), Math.abs(header[5]), header[6]]).copy(head, 8);
  head.writeUInt8(classifier ? 0 : 1, 36);
  return Buffer.concat([head, ...V1_ORDER.map((n) => parts[n]), ...(classifier ? [classifier] : [])]);
}
