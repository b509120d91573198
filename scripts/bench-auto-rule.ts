/**
 * The measurement behind `speculation: "auto"` (AUTO_SPECULATE_BELOW in workers/engine/src/engine.ts):
 * aggregate tokens/s of N concurrent greedy sequences when every sequence speculates (EESD, DV: they
 * verify inside the batched steps) against plain AR, on real weights (stories260K, real acceptance).
 *
 *   node --import tsx scripts/bench-auto-rule.ts [--concurrency 1,4,16] [--tokens 128] [--rounds 3]
 *
 * Prints a markdown table (median of the rounds; decoders interleaved within each round).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureStoriesPackage } from '../infra/local/seed';
import { Engine } from '../workers/engine/src/engine';

const { values } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '1,4,16' },
    tokens: { type: 'string', default: '128' },
    rounds: { type: 'string', default: '3' },
  },
});
const NS = values.concurrency.split(',').map(Number);
const TOKENS = Number(values.tokens);
const ROUNDS = Number(values.rounds);
const DECODERS = ['ar', 'eesd', 'dv'] as const;
const OPENERS = ['Once upon a time', 'Lily went to the park', 'Tom had a big red ball', 'The sun was hot'];

const dir = await mkdtemp(path.join(tmpdir(), 'ppsd-auto-'));
const pkg = path.join(dir, 'stories260K');
await ensureStoriesPackage(pkg);
const engine = await Engine.open(pkg, { maxBatch: Math.max(...NS), verified: true });
const rates = new Map<string, number[]>();
const accept = new Map<string, number[]>();
try {
  for (let r = 0; r < ROUNDS; r++) {
    for (const n of NS) {
      for (const decoder of DECODERS) {
        const t0 = performance.now();
        const out = await Promise.all(
          Array.from({ length: n }, (_, i) =>
            engine.generate(`${OPENERS[i % OPENERS.length]}${' and'.repeat(Math.floor(i / 4))}`, {
              maxTokens: TOKENS,
              temperature: 0,
              decoder,
            }),
          ),
        );
        const s = (performance.now() - t0) / 1000;
        const key = `${decoder}:${n}`;
        rates.set(key, [...(rates.get(key) ?? []), out.reduce((a, o) => a + o.completionTokens, 0) / s]);
        const proposed = out.reduce((a, o) => a + o.stats.draftTokensProposed, 0);
        const accepted = out.reduce((a, o) => a + o.stats.draftTokensAccepted, 0);
        accept.set(key, [...(accept.get(key) ?? []), proposed ? accepted / proposed : 0]);
      }
    }
  }
} finally {
  await engine.close();
  await rm(dir, { recursive: true, force: true });
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const lines = [
  `stories260K, greedy, ${TOKENS} tokens per sequence, median of ${ROUNDS} rounds; tokens/s (acceptance), and the ratio to AR at the same N`,
  '',
  `| N | ${DECODERS.join(' | ')} |`,
  `|---|${DECODERS.map(() => '---').join('|')}|`,
  ...NS.map((n) => {
    const ar = median(rates.get(`ar:${n}`)!);
    const cells = DECODERS.map((d) => {
      const v = median(rates.get(`${d}:${n}`)!);
      const a = median(accept.get(`${d}:${n}`)!);
      return d === 'ar' ? v.toFixed(0) : `${v.toFixed(0)} (${(100 * a).toFixed(0)}%) ${(v / ar).toFixed(2)}x`;
    });
    return `| ${n} | ${cells.join(' | ')} |`;
  }),
];
console.log(lines.join('\n'));
