import { execFile } from 'node:child_process';
import { request } from 'node:http';

/** Stops the worker and resolves once it has exited (it drains on SIGTERM). */
export type WorkerStopper = () => Promise<void>;

/** `systemctl stop <unit>`: blocks until the unit stopped (SIGTERM, then SIGKILL after TimeoutStopSec). */
export function systemdStopper(
  unit: string,
  run: (file: string, args: string[]) => Promise<void> = execFileAsync,
): WorkerStopper {
  return () => run('systemctl', ['stop', unit]);
}

function execFileAsync(file: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(file, args, (err, _stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
      else resolve();
    });
  });
}

/**
 * Docker Engine API over its unix socket: `POST /containers/<name>/stop?t=<seconds>` sends the
 * container's stop signal (SIGTERM), waits up to `t` seconds for it to exit, then kills it. The
 * call returns when the container has stopped. 304 (already stopped) and 404 (gone) count as stopped.
 */
export function dockerStopper(
  container: string,
  opts: { socketPath?: string; timeoutSeconds?: number } = {},
): WorkerStopper {
  const socketPath = opts.socketPath ?? '/var/run/docker.sock';
  const t = opts.timeoutSeconds ?? 870;
  return () =>
    new Promise<void>((resolve, reject) => {
      const req = request(
        {
          socketPath,
          method: 'POST',
          path: `/containers/${encodeURIComponent(container)}/stop?t=${t}`,
          timeout: (t + 60) * 1000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            if (status === 204 || status === 304 || status === 404) resolve();
            else
              reject(
                new Error(`docker stop ${container}: HTTP ${status} ${Buffer.concat(chunks).toString()}`),
              );
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`docker stop ${container}: no answer in ${t + 60}s`)));
      req.on('error', reject);
      req.end();
    });
}

/** Parses `PPSD_DRAIN_STOP`: `systemd:<unit>` or `docker:<container>`. */
export function parseStopSpec(
  spec: string,
  opts: { timeoutSeconds?: number; socketPath?: string } = {},
): { kind: 'systemd' | 'docker'; target: string; stop: WorkerStopper } {
  const m = /^(systemd|docker):([A-Za-z0-9@._:-]+)$/.exec(spec.trim());
  if (!m) {
    throw new Error(
      `PPSD_DRAIN_STOP must be "systemd:<unit>" or "docker:<container>", got ${JSON.stringify(spec)}`,
    );
  }
  const kind = m[1] as 'systemd' | 'docker';
  const target = m[2];
  return {
    kind,
    target,
    stop: kind === 'systemd' ? systemdStopper(target) : dockerStopper(target, opts),
  };
}
