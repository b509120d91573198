// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the assertions compare Terraform interpolations literally
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseFile, ROOT, TF_DIR } from './terraform';

const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

/** `ARG NAME=value` defaults of a Dockerfile. */
function args(dockerfile: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [, k, v] of dockerfile.matchAll(/^ARG\s+([A-Z_]+)=(\S+)\s*$/gm)) out[k] = v;
  return out;
}

/** Stage name -> its instructions, joined with line continuations undone. */
function stages(dockerfile: string): Map<string, string> {
  const out = new Map<string, string>();
  const text = dockerfile.replace(/\\\n/g, ' ');
  let current = '';
  for (const line of text.split('\n')) {
    const from = /^FROM\s+\S+(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) {
      current = from[1] ?? `stage${out.size}`;
      out.set(current, '');
    } else if (current) out.set(current, `${out.get(current)}${line}\n`);
  }
  return out;
}

/** [Section] Key=Value pairs of a systemd unit (continuations joined, repeated keys kept last). */
function unit(text: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  let section = '';
  for (const line of text.replace(/\\\n\s*/g, ' ').split('\n')) {
    const s = /^\[(\w+)\]$/.exec(line.trim());
    if (s) {
      section = s[1];
      out[section] = {};
    } else if (section && /^\w+=/.test(line)) {
      const i = line.indexOf('=');
      out[section][line.slice(0, i)] = line.slice(i + 1).trim();
    }
  }
  return out;
}

function seconds(v: string): number {
  const m = /^(\d+)(s|min)?$/.exec(v);
  if (!m) throw new Error(`cannot read duration ${v}`);
  return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
}

describe('worker image', () => {
  const dockerfile = read('infra/docker/worker.Dockerfile');
  const a = args(dockerfile);

  it('bakes the ORT CUDA providers of exactly the onnxruntime-node version the lockfile installs', () => {
    const lock = JSON.parse(read('package-lock.json'));
    const locked = lock.packages['node_modules/onnxruntime-node']?.version;
    expect(locked, 'onnxruntime-node in package-lock.json').toMatch(/^\d+\.\d+\.\d+$/);
    expect(a.ORT_VERSION).toBe(locked);
    const installed = JSON.parse(read('node_modules/onnxruntime-node/package.json')).version;
    expect(a.ORT_VERSION).toBe(installed);
    expect(dockerfile).toContain('Microsoft.ML.OnnxRuntime.Gpu.Linux/${ORT_VERSION}');
    // ...and the build refuses a node_modules that disagrees.
    expect(dockerfile).toMatch(/require\('onnxruntime-node\/package.json'\)\.version/);
  });

  it('copies the providers next to libonnxruntime.so.1 of onnxruntime-node', () => {
    const deps = stages(dockerfile).get('deps') ?? '';
    const dest = 'node_modules/onnxruntime-node/bin/napi-v6/linux/x64';
    expect(deps).toContain(`dest=${dest}`);
    for (const lib of ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so']) {
      expect(deps).toMatch(
        new RegExp(`cp \\S*runtimes/linux-x64/native/${lib.replace(/\./g, '\\.')} "\\$dest/"`),
      );
    }
    // The directory is where the installed package keeps its runtime.
    expect(existsSync(join(ROOT, dest, 'libonnxruntime.so.1'))).toBe(true);
  });

  it('is a CUDA 12 + cuDNN runtime base with Node 20 and installs with the ORT download skipped', () => {
    expect(a.CUDA_IMAGE).toMatch(/^nvidia\/cuda:12\.\d+\.\d+-cudnn-runtime-/);
    expect(a.NODE_IMAGE).toMatch(/^node:20[-.]/);
    expect(dockerfile).toMatch(/^FROM \$\{CUDA_IMAGE\} AS base$/m);
    expect(dockerfile.replace(/\\\n\s*/g, ' ')).toMatch(/ONNXRUNTIME_NODE_INSTALL=skip npm ci\b/);
  });

  it('starts the worker from /app and stops it with SIGTERM', () => {
    const worker = stages(dockerfile).get('worker') ?? '';
    expect(worker).toContain('WORKDIR /app');
    expect(worker).toContain('RUN npm run build');
    expect(worker).toContain('CMD ["node", "--enable-source-maps", "dist/worker/main.js"]');
    expect(worker).toContain('STOPSIGNAL SIGTERM');
    expect(existsSync(join(ROOT, 'workers/autoscaler/src/drain-main.ts'))).toBe(true);
  });
});

describe('API / Lambda image', () => {
  const dockerfile = read('infra/docker/api.Dockerfile');
  const s = stages(dockerfile);

  it('has a Node server target and a Lambda target from the same source', () => {
    expect(s.get('server')).toContain('RUN npm run build');
    expect(s.get('server')).toContain('CMD ["node", "--enable-source-maps", "dist/api/server.js"]');
    expect(s.get('lambda')).toContain('RUN npm run build');
    expect(s.get('lambda')).toContain('COPY infra/docker/lambda/ ./lambda/');
    expect(args(dockerfile).LAMBDA_IMAGE).toMatch(/^public\.ecr\.aws\/lambda\/nodejs:20/);
    expect(dockerfile.replace(/\\\n\s*/g, ' ')).toMatch(/ONNXRUNTIME_NODE_INSTALL=skip npm ci\b/);
  });

  it('every Lambda command terraform configures has its entry file', async () => {
    // the shims re-export the esbuild bundles (scripts/build.ts) of these sources
    const handlers = new Map([
      ['modules/api/main.tf', 'dist/api/lambda.js'],
      ['modules/backlog_publisher/main.tf', 'dist/autoscaler/lambda.js'],
    ]);
    const build = read('scripts/build.ts');
    expect(build).toContain("lambda: 'apps/api/src/lambda.ts'");
    expect(build).toContain("lambda: 'workers/autoscaler/src/lambda.ts'");
    for (const [tf, target] of handlers) {
      const parsed = await parseFile(join(TF_DIR, tf));
      const fns = Object.values(parsed.resource.aws_lambda_function)[0] as {
        image_config: { command: string[] }[];
      }[];
      const [cmd] = fns[0].image_config[0].command;
      const [file, exportName] = cmd.split('.');
      const shim = read(`infra/docker/${file}.mjs`);
      expect(shim).toContain(`export { ${exportName} } from '../${target}'`);
      expect(shim).not.toContain('tsx');
    }
  });

  it('the publisher handler module exports a handler and connects to nothing when imported', async () => {
    const mod = await import('../../workers/autoscaler/src/lambda');
    expect(typeof mod.handler).toBe('function');
  });
});

describe('systemd units', () => {
  const worker = unit(read('infra/systemd/ppsd-worker.service'));
  const drain = unit(read('infra/systemd/ppsd-drain-watcher.service'));

  it('the worker unit stops with SIGTERM and waits long enough to drain', async () => {
    const svc = worker.Service;
    expect(svc.KillSignal).toBe('SIGTERM');
    const stopTimeout = seconds(svc.TimeoutStopSec);
    expect(stopTimeout).toBeGreaterThanOrEqual(600);
    // docker stop gives the container less than systemd gives the unit...
    const dockerStop = Number(/docker stop --time (\d+)/.exec(svc.ExecStop)?.[1]);
    expect(dockerStop).toBeLessThan(stopTimeout);
    expect(svc.ExecStart).toContain(`--stop-timeout ${dockerStop}`);
    // ...and the termination hook waits longer than the unit's whole stop.
    const root = await parseFile(join(TF_DIR, 'variables.tf'));
    const drainDefault = root.variable.worker_drain_timeout_seconds[0].default as number;
    expect(drainDefault).toBeGreaterThanOrEqual(stopTimeout);
    expect(drainDefault + 120).toBeGreaterThan(stopTimeout);
  });

  it('the worker unit runs the worker image on every GPU with its environment file', () => {
    const start = worker.Service.ExecStart;
    expect(start).toContain('--gpus all');
    expect(start).toContain('--name ppsd-worker');
    expect(start).toContain('--env-file /etc/ppsd/worker.env');
    expect(start).toContain('--volume /var/cache/ppsd:/var/cache/ppsd');
    expect(start).toMatch(/\$\{PPSD_WORKER_IMAGE\}$/);
    expect(worker.Service.EnvironmentFile).toBe('/etc/ppsd/image.env');
    expect(worker.Service.Restart).toBe('on-failure');
  });

  it('the drain watcher is its own unit that can stop the worker container', () => {
    const start = drain.Service.ExecStart;
    expect(start).toContain('node dist/autoscaler/drain-watcher.js');
    expect(start).toContain('--volume /var/run/docker.sock:/var/run/docker.sock');
    expect(start).toContain('--env-file /etc/ppsd/drain.env');
    expect(drain.Service.Restart).toBe('always');
  });

  it('the boot script is valid bash and branches on the lifecycle state', () => {
    const script = read('infra/systemd/ppsd-boot.sh');
    const r = spawnSync('bash', ['-n', join(ROOT, 'infra/systemd/ppsd-boot.sh')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(script).toContain('autoscaling/target-lifecycle-state');
    expect(script).toContain('Warmed:*)');
    expect(script).toContain('systemctl start ppsd-worker.service ppsd-drain-watcher.service');
    expect(script).toContain('--lifecycle-action-result "$1"');
    expect(unit(read('infra/systemd/ppsd-boot.service')).Service.ExecStart).toBe('/opt/ppsd/ppsd-boot.sh');
  });
});
