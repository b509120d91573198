/**
 * Node entry: `tsx apps/api/src/server.ts`. Serves the app on PORT (default 8080); on SIGTERM/SIGINT
 * stops accepting connections, lets open requests finish for PPSD_SHUTDOWN_GRACE_SECONDS, then closes
 * Redis and exits. Configuration errors are logged (one `problems` entry each) and exit with status 2.
 * Logs: JSON lines on stdout (@ppsd/contract/log, PPSD_LOG_LEVEL).
 */
import { serve } from '@hono/node-server';
import { createLogger } from '@ppsd/contract/log';
import { ConfigError, loadConfig } from './config';
import { createRuntime } from './runtime';

const log = createLogger({ service: 'api' });

async function main() {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      log.fatal({ problems: err.problems }, err.message);
      process.exit(2);
    }
    throw err;
  }
  const runtime = await createRuntime(config, { log });
  const server = serve({ fetch: runtime.app.fetch, port: config.port, hostname: config.host }, (info) => {
    log.info(`listening on http://${info.address}:${info.port}`);
  });

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info(`${signal}: draining`);
    const force = setTimeout(() => {
      log.warn('grace period over, closing remaining connections');
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
  log.fatal({ err }, `failed to start: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
