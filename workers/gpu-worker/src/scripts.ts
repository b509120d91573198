/**
 * Lua scripts that make the worker's Redis writes atomic and idempotent. Each script touches keys of one
 * hash-tag slot only (job slot or tenant slot), so they run unchanged on Redis Cluster.
 */
import type { Redis } from 'ioredis';

/**
 * Append one event to a job's stream and wake readers. KEYS: events stream, progress hash, cancelled
 * flag (expired with the stream at the end). ARGV: event JSON, MAXLEN, wake channel,
 * kind ('start'|'tokens'|'terminal'), token end, chars end, attempt, TTL seconds.
 * Returns the entry id, or false when the write was a duplicate (token indexes already published, a
 * start already written for this attempt, or the stream already ended).
 */
const PUBLISH_EVENT = `
local events, progress, cancelled = KEYS[1], KEYS[2], KEYS[3]
local kind = ARGV[4]
if redis.call('HGET', progress, 'done') then return false end
if kind == 'tokens' then
  local have = tonumber(redis.call('HGET', progress, 'tokens') or '0')
  if tonumber(ARGV[5]) <= have then return false end
elseif kind == 'start' then
  if redis.call('HGET', progress, 'started') == ARGV[7] then return false end
end
local id = redis.call('XADD', events, 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
if kind == 'tokens' then
  redis.call('HSET', progress, 'tokens', ARGV[5], 'chars', ARGV[6], 'attempt', ARGV[7])
elseif kind == 'start' then
  redis.call('HSET', progress, 'started', ARGV[7], 'attempt', ARGV[7])
else
  redis.call('HSET', progress, 'done', '1', 'attempt', ARGV[7])
  redis.call('EXPIRE', events, ARGV[8])
  redis.call('EXPIRE', progress, ARGV[8])
  redis.call('EXPIRE', cancelled, ARGV[8])
end
redis.call('PUBLISH', ARGV[3], id)
return id
`;

/**
 * Write one attempt's usage record (once) and, on the job's final attempt, release its quota
 * reservation (once). KEYS: usage stream, usage guard, quota hash, reservations hash.
 * ARGV: usage JSON, guard TTL seconds, job id, settle ('1'|'0').
 * Returns {usage entry id or false, tokens released}.
 */
const SETTLE_USAGE = `
local usage, guard, quota, reservations = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local entry = false
if redis.call('SET', guard, '1', 'NX', 'EX', ARGV[2]) then
  entry = redis.call('XADD', usage, '*', 'u', ARGV[1])
end
local released = 0
if ARGV[4] == '1' then
  local r = redis.call('HGET', reservations, ARGV[3])
  if r then
    redis.call('HDEL', reservations, ARGV[3])
    released = tonumber(r) or 0
    local left = redis.call('HINCRBY', quota, 'reserved', -released)
    if left < 0 then redis.call('HSET', quota, 'reserved', 0) end
  end
end
return {entry, released}
`;

export interface WorkerScripts {
  ppsdPublishEvent(...args: (string | number)[]): Promise<string | null>;
  ppsdSettleUsage(...args: (string | number)[]): Promise<[string | null, number]>;
}

/** Registers the scripts on a connection (EVALSHA with EVAL fallback, also after a Redis restart). */
export function withScripts(redis: Redis): Redis & WorkerScripts {
  const r = redis as Redis & Partial<WorkerScripts>;
  if (!r.ppsdPublishEvent) {
    redis.defineCommand('ppsdPublishEvent', { numberOfKeys: 3, lua: PUBLISH_EVENT });
    redis.defineCommand('ppsdSettleUsage', { numberOfKeys: 4, lua: SETTLE_USAGE });
  }
  return redis as Redis & WorkerScripts;
}
