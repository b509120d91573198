import { keys } from './keys';
import { progressKeys, USAGE_GUARD_TTL_SECONDS } from './progress';
import { encodeUsage, type UsageRecord } from './usage';

/**
 * Tenant quota: reserved at admission (API), released when the job ends for good (worker; or the API when
 * it cancels a job that never left the queue). Tokens actually used are charged from the usage records
 * (`keys.tenantUsage`, the source of truth that survives restarts): the admission script folds records
 * newer than its cursor into `used`, so settlement itself only releases the reservation.
 *
 * `keys.tenantQuota(tenant)` hash fields:
 *   limit         tokens per period (absent: the API's configured default; 0 = unlimited)
 *   max_jobs      admitted, unfinished jobs at most (absent: the API's configured default; 0 = unlimited)
 *   reserved      tokens held by admitted, unfinished jobs
 *   used          prompt + completion tokens of usage records in the current period (folded in lazily)
 *   used_cursor   last usage stream entry id folded into `used`
 *   period_start  ms epoch of the current period's start
 *   period_ms     period length
 * `keys.tenantReservations(tenant)` hash jobId -> reserved tokens. Its length is the tenant's number of
 * unfinished jobs (the tenant queue limit). Releasing deletes the job's entry, so it is idempotent: a
 * second release of the same job (a retried attempt, the API and a worker racing) changes nothing.
 */
export const QUOTA_FIELDS = {
  limit: 'limit',
  maxJobs: 'max_jobs',
  reserved: 'reserved',
  used: 'used',
  usedCursor: 'used_cursor',
  periodStart: 'period_start',
  periodMs: 'period_ms',
} as const;

/**
 * KEYS: quota, reservations, idempotency key (any key of the tenant's slot when none was given), usage.
 * ARGV: jobId, tokens to reserve, default limit (0 = unlimited), period ms, now ms, default max unfinished
 *       jobs (0 = unlimited; the hash's max_jobs overrides), idempotency TTL seconds, '1' when KEYS[3] is a real idempotency key.
 * Returns ['ok', jobId] | ['idem', existingJobId] | ['queue', jobLimit] | ['quota', retryAfterMs].
 */
export const QUOTA_RESERVE_LUA = `
if ARGV[8] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {'idem', existing} end
end
local periodMs = tonumber(redis.call('HGET', KEYS[1], 'period_ms') or ARGV[4])
if periodMs == nil or periodMs <= 0 then periodMs = 86400000 end
local now = tonumber(ARGV[5])
local start = tonumber(redis.call('HGET', KEYS[1], 'period_start') or '-1')
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
if start < 0 or now >= start + periodMs then
  start = now - (now % periodMs)
  used = 0
end
local cursor = redis.call('HGET', KEYS[1], 'used_cursor')
local from = tostring(start)
if cursor and tonumber(string.match(cursor, '^(%d+)')) >= start then from = '(' .. cursor end
for _ = 1, 20 do
  local recs = redis.call('XRANGE', KEYS[4], from, '+', 'COUNT', 500)
  for _, rec in ipairs(recs) do
    local f = rec[2]
    for i = 1, #f, 2 do
      if f[i] == 'u' then
        local ok, u = pcall(cjson.decode, f[i + 1])
        if ok then used = used + (tonumber(u['promptTokens']) or 0) + (tonumber(u['completionTokens']) or 0) end
      end
    end
    cursor = rec[1]
    from = '(' .. cursor
  end
  if #recs < 500 then break end
end
redis.call('HSET', KEYS[1], 'period_start', start, 'period_ms', periodMs, 'used', used)
if cursor then redis.call('HSET', KEYS[1], 'used_cursor', cursor) end
local maxJobs = tonumber(redis.call('HGET', KEYS[1], 'max_jobs') or ARGV[6])
if maxJobs > 0 and redis.call('HLEN', KEYS[2]) >= maxJobs then
  return {'queue', tostring(maxJobs)}
end
local need = tonumber(ARGV[2])
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or ARGV[3])
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if limit > 0 and used + reserved + need > limit then
  if used + need <= limit and reserved > 0 then return {'quota', '0'} end
  return {'quota', tostring(start + periodMs - now)}
end
redis.call('HINCRBY', KEYS[1], 'reserved', need)
redis.call('HSET', KEYS[2], ARGV[1], need)
if ARGV[8] == '1' then redis.call('SET', KEYS[3], ARGV[1], 'EX', tonumber(ARGV[7])) end
return {'ok', ARGV[1]}
`;

/**
 * KEYS: quota, reservations. ARGV: jobId.
 * Returns the tokens that were reserved for the job, or -1 when it was already released.
 */
export const QUOTA_RELEASE_LUA = `
local r = redis.call('HGET', KEYS[2], ARGV[1])
if not r then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
local left = redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(r))
if left < 0 then redis.call('HSET', KEYS[1], 'reserved', 0) end
return tonumber(r)
`;

/** The one Redis method the quota helpers need (ioredis' `eval` fits). */
export interface EvalRedis {
  eval(script: string, numkeys: number, ...args: (string | number)[]): Promise<unknown>;
}

/**
 * Releases a job's reservation when it reaches its final state (not for an attempt that will be retried).
 * Usage is charged from the job's usage records, not here. Idempotent per job id.
 */
export async function releaseReservation(redis: EvalRedis, tenant: string, jobId: string): Promise<number> {
  const out = await redis.eval(
    QUOTA_RELEASE_LUA,
    2,
    keys.tenantQuota(tenant),
    keys.tenantReservations(tenant),
    jobId,
  );
  return Number(out);
}

/**
 * KEYS: usage stream, per-attempt guard, quota hash, reservations hash. ARGV: usage record JSON, guard
 * TTL, job id, '1' when the job ends for good. Writes the record once per attempt and, on the final
 * attempt, releases the reservation: all on the tenant's slot, in one script.
 */
const SETTLE_USAGE_LUA = `
local entry = false
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  entry = redis.call('XADD', KEYS[1], '*', 'u', ARGV[1])
end
local released = 0
if ARGV[4] == '1' then
  local r = redis.call('HGET', KEYS[4], ARGV[3])
  if r then
    redis.call('HDEL', KEYS[4], ARGV[3])
    released = tonumber(r) or 0
    local left = redis.call('HINCRBY', KEYS[3], 'reserved', -released)
    if left < 0 then redis.call('HSET', KEYS[3], 'reserved', 0) end
  end
end
return {entry, released}
`;

/**
 * The one way a usage record is written, by the worker on every end state of an attempt and by the API
 * for a job it ended itself: once per attempt (a retried attempt or a re-sent command never counts twice),
 * releasing the tenant's reservation when `final`.
 */
export async function settleUsage(redis: EvalRedis, usage: UsageRecord, final: boolean): Promise<void> {
  await redis.eval(
    SETTLE_USAGE_LUA,
    4,
    keys.tenantUsage(usage.tenant),
    progressKeys.usageWritten(usage.tenant, usage.jobId, usage.attempt),
    keys.tenantQuota(usage.tenant),
    keys.tenantReservations(usage.tenant),
    encodeUsage(usage)[1],
    USAGE_GUARD_TTL_SECONDS,
    usage.jobId,
    final ? '1' : '0',
  );
}
