/**
 * Peak memory of an opened Engine: `node --import tsx scripts/probe-engine-rss.ts <package> <maxBatch>`
 * opens the package with that maxBatch (which builds one session per lane bucket), runs a 4-token
 * generation and prints the process's RSS. One process per measurement, so the numbers are its own.
 */
import { Engine } from '../workers/engine/src/engine';

const [pkg, maxBatch] = [process.argv[2], Number(process.argv[3] ?? 16)];
if (!pkg) throw new Error('usage: probe-engine-rss.ts <package> [maxBatch]');
const engine = await Engine.open(pkg, { maxBatch, verified: true, threadsPerStage: 2 });
await engine.generate('Once upon a time', { maxTokens: 4 });
const mib = (b: number) => (b / 2 ** 20).toFixed(0);
console.log(`${pkg.split('/').pop()} maxBatch ${maxBatch}: rss ${mib(process.memoryUsage().rss)} MiB`);
await engine.close();
