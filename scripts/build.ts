/**
 * `npm run build`: esbuild bundles of the production entry points into dist/, so images and Lambda start
 * plain JavaScript instead of compiling TypeScript through tsx at every start.
 *
 *   dist/api/server.js        Node HTTP server            (+ thread.js: token counting thread)
 *   dist/api/lambda.mjs       Lambda handler (API)        (+ thread.js)
 *   dist/worker/main.js       GPU worker                  (+ engine-thread-worker.js: the engine's thread,
 *                                                          stage-worker.js: pipeline stage thread)
 *   dist/autoscaler/*.js      backlog publisher, drain watcher, publisher Lambda handler
 *
 * Worker threads start from sibling .js files (see @ppsd/engine/threads), so each thread entry is built
 * next to the bundles that spawn it. onnxruntime-node (native, with its shared libraries) stays in
 * node_modules; everything else, workspace packages included, is in the bundle.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { type BuildOptions, build } from 'esbuild';

const ROOT = join(import.meta.dirname, '..');
const OUT = join(ROOT, 'dist');

const common: BuildOptions = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  sourcemap: 'linked',
  logLevel: 'warning',
  // native (onnxruntime-node) or spawning its own binary (esbuild, which bundles the console on demand)
  external: ['onnxruntime-node', 'esbuild'],
  // CommonJS dependencies bundled into ESM still call require() for Node built-ins.
  banner: {
    js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
  },
};

const targets: { dir: string; entries: Record<string, string> }[] = [
  {
    dir: 'api',
    entries: {
      server: 'apps/api/src/server.ts',
      lambda: 'apps/api/src/lambda.ts',
      thread: 'apps/api/src/tokens/thread.ts',
    },
  },
  {
    dir: 'worker',
    entries: {
      main: 'workers/gpu-worker/src/main.ts',
      'stage-worker': 'workers/engine/src/decode/stage-worker.ts',
      'engine-thread-worker': 'workers/engine/src/engine-thread-worker.ts',
    },
  },
  {
    dir: 'autoscaler',
    entries: {
      publisher: 'workers/autoscaler/src/main.ts',
      'drain-watcher': 'workers/autoscaler/src/drain-main.ts',
      lambda: 'workers/autoscaler/src/lambda.ts',
    },
  },
];

async function main() {
  rmSync(OUT, { recursive: true, force: true });
  for (const t of targets) {
    const started = performance.now();
    await build({
      ...common,
      entryPoints: Object.fromEntries(Object.entries(t.entries).map(([k, v]) => [k, join(ROOT, v)])),
      outdir: join(OUT, t.dir),
    });
    console.error(
      `[build] dist/${t.dir}: ${Object.keys(t.entries).join(', ')} (${Math.round(performance.now() - started)} ms)`,
    );
  }
}

await main();
