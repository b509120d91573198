import { createLogger, type Logger as ServiceLogger } from '@ppsd/contract/log';

export type LogFields = Record<string, unknown>;

/** What this package's code logs through: a message and its fields (`fieldsLogger` adapts pino). */
export interface Logger {
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

/** A Logger over a service logger of @ppsd/contract/log (the fields go on the JSON line). */
export function fieldsLogger(log: ServiceLogger): Logger {
  return {
    info: (msg, fields) => log.info(fields ?? {}, msg),
    warn: (msg, fields) => log.warn(fields ?? {}, msg),
    error: (msg, fields) => log.error(fields ?? {}, msg),
  };
}

/**
 * JSON lines on stdout, `service: 'autoscaler'` and `component` on each (journald and CloudWatch Logs
 * keep them as-is); level from PPSD_LOG_LEVEL.
 */
export function jsonLogger(component: string): Logger {
  return fieldsLogger(createLogger({ service: 'autoscaler', base: { component } }));
}

export const silentLogger: Logger = { info() {}, warn() {}, error() {} };

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What the AWS SDK v3 clients look like to this package: only `send` is used, so tests can fake it. */
export interface AwsClientLike {
  send(command: object): Promise<unknown>;
}
