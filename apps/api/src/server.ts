/**
 * Node entry: `tsx apps/api/src/server.ts`. Serves the app on PORT (default 8080); on SIGTERM/SIGINT
 * stops accepting connections, lets open requests finish for PPSD_SHUTDOWN_GRACE_SECONDS, then closes
 * Redis and exits. Configuration errors are printed and exit with status 2.
 */
import { serve } from '@hono/node-server';
import { ConfigError, loadConfig } from './config';
import { createRuntime } from './runtime';

async function main() {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
  const runtime = await createRuntime(config);
  const server = serve({ fetch: runtime.app.fetch, port: config.port, hostname: config.host }, (info) => {
    console.error(`[api] listening on http://${info.address}:${info.port}`);
  });

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`[api] ${signal}: draining`);
    const force = setTimeout(() => {
      console.error('[api] grace period over, closing remaining connections');
      (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
    }, config.shutdownGraceSeconds * 1000);
    force.unref();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    clearTimeout(force);
    await runtime.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err) => {
  console.error('[api] failed to start:', err);
  process.exit(1);
});
