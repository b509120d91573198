/**
 * GET /console: the web console (playground; operator views with an admin key). Static files from
 * apps/api/console: the page and its stylesheet as they are, the TypeScript bundled by esbuild on the
 * first request (kept in memory). Nothing is fetched from elsewhere at run time (CSP 'self'); the keys
 * the page is given stay in the browser (localStorage) and go only to this API, as Bearer headers.
 */

import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hono } from 'hono';
import type { AppEnv } from '../context';

/** apps/api/console, next to src/ (a bundled server must keep that layout or pass its own dir). */
// From source (apps/api/src/routes/) or from the bundle (dist/api/, see scripts/build.ts).
const DIR = [new URL('../../console/', import.meta.url), new URL('../../apps/api/console/', import.meta.url)]
  .map((u) => fileURLToPath(u))
  .find((d) => existsSync(join(d, 'index.html'))) as string;

const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'";

/** The console's files, built once per process. */
export function consoleAssets(dir = DIR) {
  let bundle: Promise<string> | undefined;
  return {
    html: () => readFile(`${dir}index.html`, 'utf8'),
    css: () => readFile(`${dir}style.css`, 'utf8'),
    js: () => {
      bundle ??= import('esbuild')
        .then((esbuild) =>
          esbuild.build({
            entryPoints: [`${dir}src/main.ts`],
            bundle: true,
            minify: true,
            format: 'esm',
            platform: 'browser',
            target: 'es2022',
            write: false,
            logLevel: 'silent',
          }),
        )
        .then((r) => r.outputFiles[0].text)
        .catch((err: unknown) => {
          bundle = undefined;
          throw err;
        });
      return bundle;
    },
  };
}

export function consoleRoutes(assets = consoleAssets()) {
  const app = new Hono<AppEnv>();
  const headers = (type: string, cache: string) => ({
    'Content-Type': type,
    'Cache-Control': cache,
    'Content-Security-Policy': CSP,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
  });
  const page = async () =>
    new Response(await assets.html(), { headers: headers('text/html; charset=utf-8', 'no-cache') });
  app.get('/console', page);
  app.get('/console/', page);
  app.get(
    '/console/app.js',
    async () =>
      new Response(await assets.js(), { headers: headers('text/javascript; charset=utf-8', 'no-cache') }),
  );
  app.get(
    '/console/style.css',
    async () => new Response(await assets.css(), { headers: headers('text/css; charset=utf-8', 'no-cache') }),
  );
  return app;
}
