/**
 * Starting a worker thread on one of this project's modules, wherever the process runs: TypeScript
 * source (`node --import tsx`, the tsx CLI, vitest) or a built bundle (`.js`).
 *
 * From source, workers need tsx. An inherited `--import tsx` does not reach a Worker's entry module on
 * Node 20, so the Worker starts from a tiny eval'd CommonJS script that registers tsx's require hook and
 * then requires the entry (by absolute path). The require hook starts about twice as fast as tsx's ESM
 * loader, which spawns a loader thread per Worker. A bundle ships its thread entries as sibling `.js`
 * files, which start directly.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** `entry` is the module's URL as written in source (`new URL('./x.ts', import.meta.url)`). */
export function spawnModuleWorker(entry: URL, options: WorkerOptions = {}): Worker {
  const file = fileURLToPath(entry);
  const built = file.replace(/\.ts$/, '.js');
  if (file !== built && existsSync(built)) return new Worker(built, options);
  if (!existsSync(file)) throw new Error(`worker entry ${file} not found (nor ${built})`);
  const tsxCjsApi = createRequire(import.meta.url).resolve('tsx/cjs/api');
  const boot = `require(${JSON.stringify(tsxCjsApi)}).register(); require(${JSON.stringify(file)});`;
  return new Worker(boot, { ...options, eval: true });
}
