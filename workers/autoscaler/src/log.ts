export type LogFields = Record<string, unknown>;

export interface Logger {
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

function line(level: string, component: string, msg: string, fields?: LogFields): string {
  return JSON.stringify({ time: new Date().toISOString(), level, component, msg, ...fields });
}

/** JSON lines on stdout/stderr (journald and CloudWatch Logs both keep them as-is). */
export function jsonLogger(component: string): Logger {
  return {
    info: (msg, fields) => process.stdout.write(`${line('info', component, msg, fields)}\n`),
    warn: (msg, fields) => process.stderr.write(`${line('warn', component, msg, fields)}\n`),
    error: (msg, fields) => process.stderr.write(`${line('error', component, msg, fields)}\n`),
  };
}

export const silentLogger: Logger = { info() {}, warn() {}, error() {} };

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What the AWS SDK v3 clients look like to this package: only `send` is used, so tests can fake it. */
export interface AwsClientLike {
  send(command: object): Promise<unknown>;
}
