/**
 * `ppsd admin ...`: the admin API from the command line, for operators, scripts and cron. Plain fetch
 * and the contract's types: it imports neither the API's server code nor the engine or the worker
 * (bin/ppsd routes `admin` here, every other command to the engine's CLI, so the workspace graph stays
 * acyclic).
 *
 *   PPSD_API_URL (or --url, default http://127.0.0.1:8080) and PPSD_ADMIN_KEY (or --key) say where and who.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { ApiKeyView, AuditEntry, TenantView, UsageReport } from '@ppsd/contract';

export const ADMIN_USAGE = `usage: ppsd admin <command> [options]

commands:
  tenants [list]                         tenants with their limits and use
  tenants create <id> [--models a,b]     create a tenant
  tenants disable|enable <id>            refuse (or accept again) a tenant's keys
  tenants models <id> <a,b|all>          the models a tenant may use
  keys issue <tenant>                    issue a key (printed once, on stdout)
  keys list [--tenant <id>]              keys by prefix
  keys revoke <prefix>                   revoke a key (refused from the next request on)
  quota set <tenant> [--tokens N] [--jobs N]
                                         token quota per period / unfinished-job limit
                                         (0 = unlimited, 'default' = the server's setting)
  usage [--from T] [--to T] [--tenant <id>] [--csv]
                                         usage per tenant, model and UTC day (T: ISO 8601 or ms)
  audit [--from T] [--limit N]           admin actions, newest first

options:
  --url <url>        API base URL (PPSD_API_URL; default http://127.0.0.1:8080)
  --key <key>        admin key (PPSD_ADMIN_KEY; or --key-file <path>)
  --json             print the API's JSON instead of a table
`;

export class AdminCliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

export interface CliIo {
  env: Record<string, string | undefined>;
  fetch: typeof fetch;
  out: (s: string) => void;
  err: (s: string) => void;
}

const usageError = (msg: string) => new AdminCliError(`${msg}\n\n${ADMIN_USAGE}`, 2);

/** A fixed-width table of `rows` under `columns`. */
export function table(columns: string[], rows: (string | number | boolean | null | undefined)[][]): string {
  const cells = [
    columns,
    ...rows.map((r) => r.map((v) => (v === null || v === undefined ? '-' : String(v)))),
  ];
  const widths = columns.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells
    .map((r) =>
      r
        .map((v, i) => v.padEnd(widths[i]))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

const when = (ms: number | undefined) =>
  ms ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : undefined;

const limit = (v: string | undefined, name: string): number | null | undefined => {
  if (v === undefined) return undefined;
  if (v === 'default') return null;
  if (!/^\d+$/.test(v)) throw usageError(`--${name} must be a non-negative integer or 'default', got '${v}'`);
  return Number(v);
};

const parse = (args: string[]) =>
  parseArgs({
    args,
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      key: { type: 'string' },
      'key-file': { type: 'string' },
      json: { type: 'boolean' },
      csv: { type: 'boolean' },
      from: { type: 'string' },
      to: { type: 'string' },
      tenant: { type: 'string' },
      models: { type: 'string' },
      tokens: { type: 'string' },
      jobs: { type: 'string' },
      limit: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });

export async function runAdmin(argv: string[], io: CliIo): Promise<void> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (err) {
    throw usageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  const [cmd, sub, ...args] = positionals;
  if (values.help || !cmd) {
    io.out(ADMIN_USAGE);
    return;
  }
  const base = (values.url ?? io.env.PPSD_API_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  const key =
    values.key ??
    (values['key-file'] ? readFileSync(values['key-file'], 'utf8').trim() : undefined) ??
    io.env.PPSD_ADMIN_KEY;
  if (!key) throw usageError('no admin key: set PPSD_ADMIN_KEY or pass --key / --key-file');

  const call = async (method: string, path: string, body?: unknown): Promise<Response> => {
    let res: Response;
    try {
      res = await io.fetch(`${base}${path}`, {
        method,
        headers: {
          Authorization: `Bearer ${key}`,
          ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      throw new AdminCliError(`cannot reach ${base}: ${(err as Error).message}`, 1);
    }
    if (!res.ok) {
      const text = await res.text();
      let message = text;
      try {
        message = (JSON.parse(text) as { error: { message: string } }).error.message;
      } catch {}
      throw new AdminCliError(`${method} ${path}: ${res.status} ${message}`, 1);
    }
    return res;
  };
  const get = async <T>(method: string, path: string, body?: unknown) =>
    (await (await call(method, path, body)).json()) as T;
  const print = (data: unknown, render: () => string) =>
    io.out(values.json ? JSON.stringify(data, null, 2) : render());
  const tenantsTable = (ts: TenantView[]) =>
    table(
      ['tenant', 'status', 'keys', 'models', 'token_quota', 'job_limit', 'used', 'reserved', 'unfinished'],
      ts.map((t) => [
        t.id,
        t.disabled ? 'disabled' : 'active',
        t.active_keys,
        t.models ? t.models.join(',') || '(none)' : 'all',
        t.token_quota ?? `default (${t.effective.token_quota})`,
        t.job_limit ?? `default (${t.effective.job_limit})`,
        t.used_tokens,
        t.reserved_tokens,
        t.unfinished_jobs,
      ]),
    );
  const need = (v: string | undefined, what: string) => {
    if (!v) throw usageError(`missing ${what}`);
    return encodeURIComponent(v);
  };
  const query = (o: Record<string, string | undefined>) => {
    const q = new URLSearchParams(Object.entries(o).filter((e): e is [string, string] => e[1] !== undefined));
    return q.size ? `?${q}` : '';
  };

  switch (`${cmd} ${sub ?? ''}`.trim()) {
    case 'tenants':
    case 'tenants list': {
      const r = await get<{ data: TenantView[] }>('GET', '/admin/tenants');
      return print(r, () => tenantsTable(r.data));
    }
    case 'tenants create': {
      const models = values.models?.split(',').filter(Boolean);
      if (!args[0]) throw usageError('missing tenant id');
      const t = await get<TenantView>('POST', '/admin/tenants', { id: args[0], models });
      return print(t, () => tenantsTable([t]));
    }
    case 'tenants disable':
    case 'tenants enable': {
      const t = await get<TenantView>('PATCH', `/admin/tenants/${need(args[0], 'tenant id')}`, {
        disabled: sub === 'disable',
      });
      return print(t, () => tenantsTable([t]));
    }
    case 'tenants models': {
      const list = args[1] ?? need(undefined, "model list (a,b or 'all')");
      const models = list === 'all' ? null : list.split(',').filter(Boolean);
      const t = await get<TenantView>('PATCH', `/admin/tenants/${need(args[0], 'tenant id')}`, { models });
      return print(t, () => tenantsTable([t]));
    }
    case 'keys issue': {
      const k = await get<{ key: string; prefix: string; tenant: string }>(
        'POST',
        `/admin/tenants/${need(args[0], 'tenant id')}/keys`,
      );
      if (values.json) return print(k, () => '');
      io.out(k.key);
      io.err(`issued ${k.prefix} for tenant ${k.tenant}; the key above is shown only this once`);
      return;
    }
    case 'keys list': {
      const r = await get<{ data: ApiKeyView[] }>('GET', `/admin/keys${query({ tenant: values.tenant })}`);
      return print(r, () =>
        table(
          ['prefix', 'tenant', 'status', 'source', 'created', 'created_by', 'revoked', 'revoked_by'],
          r.data.map((k) => [
            k.prefix,
            k.tenant,
            k.active ? 'active' : 'revoked',
            k.source,
            when(k.createdAt),
            k.createdBy,
            when(k.revokedAt),
            k.revokedBy,
          ]),
        ),
      );
    }
    case 'keys revoke': {
      const r = await get<{ prefix: string; tenant: string; status: string }>(
        'DELETE',
        `/admin/keys/${need(args[0], 'key prefix')}`,
      );
      return print(r, () => `${r.prefix} (tenant ${r.tenant}): ${r.status.replace('_', ' ')}`);
    }
    case 'quota set': {
      const body = { tokens: limit(values.tokens, 'tokens'), jobs: limit(values.jobs, 'jobs') };
      if (body.tokens === undefined && body.jobs === undefined)
        throw usageError('give --tokens and/or --jobs');
      const t = await get<TenantView>('PUT', `/admin/tenants/${need(args[0], 'tenant id')}/quota`, body);
      return print(t, () => tenantsTable([t]));
    }
    case 'usage': {
      const q = { from: values.from, to: values.to, tenant: values.tenant };
      if (values.csv) {
        const res = await call('GET', `/admin/usage${query({ ...q, format: 'csv' })}`);
        io.out((await res.text()).replace(/\r\n$/, '').replace(/\r\n/g, '\n'));
        return;
      }
      const r = await get<UsageReport>('GET', `/admin/usage${query(q)}`);
      return print(r, () =>
        table(
          ['tenant', 'model', 'day', 'prompt_tokens', 'completion_tokens', 'jobs', 'device_seconds'],
          r.data.map((u) => [
            u.tenant,
            u.model,
            u.day,
            u.prompt_tokens,
            u.completion_tokens,
            u.jobs,
            u.device_seconds.toFixed(3),
          ]),
        ),
      );
    }
    case 'audit': {
      const r = await get<{ data: AuditEntry[] }>(
        'GET',
        `/admin/audit${query({ from: values.from, limit: values.limit })}`,
      );
      return print(r, () =>
        table(
          ['when', 'actor', 'action', 'target', 'status', 'request'],
          r.data.map((e) => [when(e.at), e.actor, e.action, e.target, e.status, `${e.method} ${e.path}`]),
        ),
      );
    }
    default:
      throw usageError(`unknown admin command '${positionals.join(' ')}'`);
  }
}
