/**
 * `ppsd admin ...` against the API served over HTTP on loopback: tenants, keys issue / list / revoke (the
 * API then refuses the key), quota set, usage --csv, audit; and bin/ppsd routing `admin` to this client.
 */
import { spawn } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { serve } from '@hono/node-server';
import { encodeUsage, keys, type UsageRecord } from '@ppsd/contract';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminCliError, runAdmin } from '../../apps/api/src/cli/admin';
import { ADMIN_KEY, MODEL, startApi, type TestApi } from '../helpers/api-app';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import { ROOT } from '../helpers/stack';

let server: RedisServer;
let api: TestApi;
let http: ReturnType<typeof serve>;
let url: string;

beforeAll(async () => {
  server = await startRedis();
  api = await startApi(server.url);
  await new Promise<void>((res) => {
    http = serve({ fetch: api.app.fetch, port: 0, hostname: '127.0.0.1' }, () => res());
  });
  url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((r) => http?.close(r));
  await api?.close();
  await server?.stop();
});

async function cli(...argv: string[]): Promise<{ out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  await runAdmin(argv, {
    env: { PPSD_API_URL: url, PPSD_ADMIN_KEY: ADMIN_KEY },
    fetch,
    out: (s) => out.push(s),
    err: (s) => err.push(s),
  });
  return { out: out.join('\n'), err: err.join('\n') };
}

const v1 = (key: string) => fetch(`${url}/v1/models`, { headers: { Authorization: `Bearer ${key}` } });

describe('ppsd admin', () => {
  it('tenants create / list, keys issue / list / revoke: the API refuses a revoked key', async () => {
    expect((await cli('tenants', 'create', 'hooli')).out).toMatch(
      /^tenant\s+status.*\nhooli\s+active\s+0\s+all/,
    );
    const issued = await cli('keys', 'issue', 'hooli');
    const key = issued.out.trim();
    expect(key).toMatch(/^ppsd_[a-z0-9]{12}_[A-Za-z0-9_-]{43}$/);
    const prefix = key.slice(0, 'ppsd_'.length + 12);
    expect(issued.err).toContain(`issued ${prefix} for tenant hooli`);
    expect((await v1(key)).status).toBe(200);

    const listed = await cli('keys', 'list', '--tenant', 'hooli');
    expect(listed.out).toMatch(new RegExp(`\\n${prefix}\\s+hooli\\s+active\\s+issued`));
    expect(listed.out).not.toContain(key);
    const tenants = await cli('tenants');
    expect(tenants.out).toMatch(/\nhooli\s+active\s+1\s+all/);
    expect(tenants.out).toMatch(/\nacme\s+active/);

    expect((await cli('keys', 'revoke', prefix)).out).toBe(`${prefix} (tenant hooli): revoked`);
    expect((await v1(key)).status).toBe(401);
    expect((await cli('keys', 'list', '--tenant', 'hooli', '--json')).out).toContain('"active": false');
  });

  it('tenants disable / enable and models', async () => {
    await cli('tenants', 'disable', 'hooli');
    expect(
      JSON.parse((await cli('tenants', '--json')).out).data.find((t: { id: string }) => t.id === 'hooli'),
    ).toMatchObject({ disabled: true });
    await cli('tenants', 'enable', 'hooli');
    expect((await cli('tenants', 'models', 'hooli', MODEL)).out).toMatch(
      /\nhooli\s+active\s+0\s+stories260K/,
    );
    expect((await cli('tenants', 'models', 'hooli', 'all')).out).toMatch(/\nhooli\s+active\s+0\s+all/);
  });

  it('quota set --tokens --jobs, and back to the default', async () => {
    const set = await cli('quota', 'set', 'hooli', '--tokens', '1000', '--jobs', '2', '--json');
    expect(JSON.parse(set.out)).toMatchObject({ token_quota: 1000, job_limit: 2 });
    const back = await cli('quota', 'set', 'hooli', '--tokens', 'default', '--json');
    expect(JSON.parse(back.out)).toMatchObject({ token_quota: null, job_limit: 2 });
    await expect(cli('quota', 'set', 'hooli', '--tokens', '-3')).rejects.toMatchObject({ exitCode: 2 });
    await expect(cli('quota', 'set', 'nobody', '--jobs', '1')).rejects.toThrow(/404 No tenant 'nobody'/);
  });

  it('usage --from --to --csv: the billing export', async () => {
    const day = Date.UTC(2025, 5, 1, 12);
    const rec: UsageRecord = {
      tenant: 'hooli',
      jobId: 'job_h1',
      attempt: 1,
      model: MODEL,
      status: 'completed',
      finishReason: 'stop',
      promptTokens: 4,
      completionTokens: 16,
      draftTokensProposed: 0,
      draftTokensAccepted: 0,
      decoder: 'ar',
      wallMs: 5,
      deviceSeconds: 0.005,
      endedAt: day,
    };
    await api.redis.xadd(keys.tenantUsage('hooli'), `${day}-0`, ...encodeUsage(rec));
    const csv = await cli('usage', '--from', '2025-06-01', '--to', '2025-06-02', '--csv');
    expect(csv.out).toBe(
      'tenant,model,day,prompt_tokens,completion_tokens,jobs\nhooli,stories260K,2025-06-01,4,16,1',
    );
    expect((await cli('usage', '--from', '2025-06-01', '--to', '2025-06-02')).out).toMatch(
      /\nhooli\s+stories260K\s+2025-06-01\s+4\s+16\s+1\s+0\.005/,
    );
  });

  it('audit shows the actions above; a bad key or URL is a clear error with exit code 1', async () => {
    const audit = await cli('audit', '--limit', '50');
    expect(audit.out).toMatch(/ppsd_admin_root00000000\s+key\.revoke\s+ppsd_/);
    expect(audit.out).toMatch(/tenant\.create\s+hooli\s+201\s+POST \/admin\/tenants/);
    const bad = runAdmin(['tenants'], {
      env: { PPSD_API_URL: url, PPSD_ADMIN_KEY: 'ppsd_admin_zzzzzzzzzzzz_wrong' },
      fetch,
      out: () => {},
      err: () => {},
    });
    await expect(bad).rejects.toThrow(/401 Incorrect or revoked admin key/);
    await expect(bad).rejects.toBeInstanceOf(AdminCliError);
    await expect(
      runAdmin(['tenants'], {
        env: { PPSD_ADMIN_KEY: ADMIN_KEY, PPSD_API_URL: 'http://127.0.0.1:1' },
        fetch,
        out: () => {},
        err: () => {},
      }),
    ).rejects.toThrow(/cannot reach http:\/\/127\.0\.0\.1:1/);
  });

  it('bin/ppsd routes admin to this client (a real process over HTTP)', async () => {
    // async: the API answering it lives in this process
    const run = (args: string[], env: Record<string, string>) =>
      new Promise<{ status: number | null; stdout: string; stderr: string }>((res) => {
        const child = spawn(join(ROOT, 'bin/ppsd'), args, {
          env: { ...process.env, NODE_NO_WARNINGS: '1', ...env },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.stderr.on('data', (d) => (stderr += d));
        child.on('close', (status) => res({ status, stdout, stderr }));
      });
    const [ok, noKey] = await Promise.all([
      run(['admin', 'tenants', '--json'], { PPSD_API_URL: url, PPSD_ADMIN_KEY: ADMIN_KEY }),
      run(['admin', 'tenants'], { PPSD_API_URL: url, PPSD_ADMIN_KEY: '' }),
    ]);
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout).data.map((t: { id: string }) => t.id)).toContain('hooli');
    expect(noKey.status).toBe(2);
    expect(noKey.stderr).toContain('no admin key');
  });
});
