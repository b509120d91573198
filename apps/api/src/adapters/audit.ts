/**
 * The admin audit log: one entry per admin API request that changes something (and every refused one),
 * appended to the Redis Stream keys.adminAudit (entry ids are ms timestamps: read by time range).
 */
import { AUDIT_MAX_LEN, type AuditEntry, keys } from '@ppsd/contract';
import type { Redis } from 'ioredis';

export function createAuditLog(redis: Redis) {
  return {
    async record(entry: Omit<AuditEntry, 'id'>): Promise<string> {
      return (await redis.xadd(
        keys.adminAudit,
        'MAXLEN',
        '~',
        AUDIT_MAX_LEN,
        '*',
        'a',
        JSON.stringify(entry),
      ))!;
    },

    /** Entries in [from, to] (ms), newest first, at most `limit`. */
    async list(o: { from: number; to: number; limit: number }): Promise<AuditEntry[]> {
      const rows = (await redis.xrevrange(
        keys.adminAudit,
        String(o.to),
        String(o.from),
        'COUNT',
        o.limit,
      )) as [string, string[]][];
      return rows.map(
        ([id, fields]) => ({ id, ...(JSON.parse(fields[fields.indexOf('a') + 1]) as object) }) as AuditEntry,
      );
    },
  };
}

export type AuditLog = ReturnType<typeof createAuditLog>;
