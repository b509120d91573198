/**
 * The billing export: usage records of one or all tenants in [from, to], summed per tenant, model and
 * UTC day (the day a record was written: its stream entry id), as JSON rows or CSV.
 */
import { decodeUsage, keys, USAGE_CSV_COLUMNS, type UsageRecord, type UsageRow } from '@ppsd/contract';
import type { Redis } from 'ioredis';

/** Records of one tenant in [from, to] ms with the time each was written. */
export async function readUsage(
  redis: Redis,
  tenant: string,
  from: number,
  to: number,
): Promise<{ at: number; record: UsageRecord }[]> {
  const rows = (await redis.xrange(keys.tenantUsage(tenant), String(from), String(to))) as [
    string,
    string[],
  ][];
  return rows.map(([id, fields]) => ({
    at: Number(id.slice(0, id.indexOf('-'))),
    record: decodeUsage(fields),
  }));
}

export const utcDay = (ms: number): string => new Date(ms).toISOString().slice(0, 10);

/** One row per (tenant, model, day), sorted by tenant, day, model; jobs = distinct job ids. */
export function usageRows(records: { at: number; record: UsageRecord }[]): UsageRow[] {
  const rows = new Map<string, UsageRow & { ids: Set<string> }>();
  for (const { at, record: r } of records) {
    const day = utcDay(at);
    const k = `${r.tenant}\0${r.model}\0${day}`;
    let row = rows.get(k);
    if (!row) {
      row = {
        tenant: r.tenant,
        model: r.model,
        day,
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
        jobs: 0,
        draft_tokens_proposed: 0,
        draft_tokens_accepted: 0,
        device_seconds: 0,
        ids: new Set(),
      };
      rows.set(k, row);
    }
    row.prompt_tokens += r.promptTokens;
    row.completion_tokens += r.completionTokens;
    row.total_tokens += r.promptTokens + r.completionTokens;
    row.draft_tokens_proposed += r.draftTokensProposed;
    row.draft_tokens_accepted += r.draftTokensAccepted;
    row.device_seconds += r.deviceSeconds;
    row.ids.add(r.jobId);
    row.jobs = row.ids.size;
  }
  return [...rows.values()]
    .map(({ ids: _ids, ...row }) => row)
    .sort(
      (a, b) =>
        a.tenant.localeCompare(b.tenant) || a.day.localeCompare(b.day) || a.model.localeCompare(b.model),
    );
}

const csvCell = (v: string | number): string => {
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

/** RFC 4180 CSV with a header line (USAGE_CSV_COLUMNS), CRLF line ends. */
export function usageCsv(rows: UsageRow[]): string {
  const lines = [USAGE_CSV_COLUMNS.join(',')];
  for (const row of rows) lines.push(USAGE_CSV_COLUMNS.map((c) => csvCell(row[c])).join(','));
  return `${lines.join('\r\n')}\r\n`;
}
