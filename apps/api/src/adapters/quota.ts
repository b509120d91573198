/**
 * Admission against a tenant's limits, in one atomic script on the tenant's slot (see @ppsd/contract
 * quota.ts): Idempotency-Key lookup, unfinished-job limit, token quota reservation.
 */
import {
  keys,
  QUOTA_FIELDS,
  QUOTA_RESERVE_LUA,
  releaseReservation,
  settleUsage,
  type UsageRecord,
} from '@ppsd/contract';
import type { Redis } from 'ioredis';

export type Reservation =
  | { kind: 'ok'; jobId: string }
  | { kind: 'idem'; jobId: string }
  | { kind: 'queue'; limit: number }
  | { kind: 'quota'; retryAfterMs: number };

export interface ReserveInput {
  tenant: string;
  jobId: string;
  tokens: number;
  idempotencyKey?: string;
  now: number;
}

export interface QuotaLimits {
  tenantTokenQuota: number;
  quotaPeriodSeconds: number;
  tenantMaxJobs: number;
  jobTtlSeconds: number;
}

export function createQuota(redis: Redis, limits: QuotaLimits) {
  return {
    async reserve(input: ReserveInput): Promise<Reservation> {
      const idem = input.idempotencyKey
        ? keys.idempotency(input.tenant, input.idempotencyKey)
        : keys.idempotency(input.tenant, '-');
      const out = (await redis.eval(
        QUOTA_RESERVE_LUA,
        4,
        keys.tenantQuota(input.tenant),
        keys.tenantReservations(input.tenant),
        idem,
        keys.tenantUsage(input.tenant),
        input.jobId,
        input.tokens,
        limits.tenantTokenQuota,
        limits.quotaPeriodSeconds * 1000,
        input.now,
        limits.tenantMaxJobs,
        limits.jobTtlSeconds,
        input.idempotencyKey ? '1' : '0',
      )) as [string, string];
      const [kind, value] = out;
      if (kind === 'ok' || kind === 'idem') return { kind, jobId: value };
      if (kind === 'queue') return { kind, limit: Number(value) };
      if (kind === 'quota') return { kind, retryAfterMs: Number(value) };
      throw new Error(`unexpected quota script answer ${JSON.stringify(out)}`);
    },

    /** Undoes a reservation whose job was never enqueued (and its Idempotency-Key mapping). */
    async release(tenant: string, jobId: string, idempotencyKey?: string): Promise<void> {
      await releaseReservation(redis, tenant, jobId);
      if (idempotencyKey) {
        const k = keys.idempotency(tenant, idempotencyKey);
        if ((await redis.get(k)) === jobId) await redis.del(k);
      }
    },

    releaseOnly: (tenant: string, jobId: string) => releaseReservation(redis, tenant, jobId),

    /**
     * A job the API ended itself (cancelled before any worker ran it): one usage record for the attempt
     * (once, same guard key as the worker's) and the reservation released, atomically on the tenant slot.
     */
    async recordEnd(usage: UsageRecord): Promise<void> {
      await settleUsage(redis, usage, true);
    },

    /**
     * A tenant's own limits (admin API): token quota per period and unfinished-job limit; null removes the
     * tenant's setting, so the server default (PPSD_TENANT_TOKEN_QUOTA / PPSD_TENANT_MAX_JOBS) applies.
     */
    async setLimits(tenant: string, l: { tokens?: number | null; jobs?: number | null }): Promise<void> {
      const k = keys.tenantQuota(tenant);
      const tx = redis.multi();
      if (l.tokens === null) tx.hdel(k, QUOTA_FIELDS.limit);
      else if (l.tokens !== undefined) tx.hset(k, QUOTA_FIELDS.limit, l.tokens);
      if (l.jobs === null) tx.hdel(k, QUOTA_FIELDS.maxJobs);
      else if (l.jobs !== undefined) tx.hset(k, QUOTA_FIELDS.maxJobs, l.jobs);
      await tx.exec();
    },

    async state(tenant: string) {
      const [q, jobs] = await Promise.all([
        redis.hgetall(keys.tenantQuota(tenant)),
        redis.hlen(keys.tenantReservations(tenant)),
      ]);
      return {
        /** The tenant's own settings (null: the default applies). */
        own: {
          tokens: q.limit !== undefined ? Number(q.limit) : null,
          jobs: q.max_jobs !== undefined ? Number(q.max_jobs) : null,
        },
        maxJobs: q.max_jobs !== undefined ? Number(q.max_jobs) : limits.tenantMaxJobs,
        limit: q.limit !== undefined ? Number(q.limit) : limits.tenantTokenQuota,
        reserved: Number(q.reserved ?? 0),
        used: Number(q.used ?? 0),
        periodStart: Number(q.period_start ?? 0),
        periodMs: Number(q.period_ms ?? limits.quotaPeriodSeconds * 1000),
        unfinishedJobs: jobs,
      };
    },
  };
}

export type Quota = ReturnType<typeof createQuota>;
