/**
 * Lua scripts that make the worker's Redis writes atomic and idempotent. Each script touches keys of one
 * hash-tag slot only (job slot or tenant slot), so they run unchanged on Redis Cluster.
 */
import type { Redis } from 'ioredis';

/**
 * Append one event to a job's stream and wake readers. KEYS: events stream, progress hash, cancelled
 * flag (expired with the stream at the end). ARGV: event JSON, MAXLEN, wake channel,
 * kind ('start'|'tokens'|'retry'|'terminal'), token end, chars end, attempt, TTL seconds.
 * Returns the entry id, or false when the write was a duplicate (token indexes already published, a
 * start or retry already written for this attempt, or the stream already ended).
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
elseif kind == 'retry' then
  if redis.call('HGET', progress, 'retried') == ARGV[7] then return false end
end
local id = redis.call('XADD', events, 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
if kind == 'tokens' then
  redis.call('HSET', progress, 'tokens', ARGV[5], 'chars', ARGV[6], 'attempt', ARGV[7])
elseif kind == 'start' then
  redis.call('HSET', progress, 'started', ARGV[7], 'attempt', ARGV[7])
elseif kind == 'retry' then
  redis.call('HSET', progress, 'retried', ARGV[7])
else
  redis.call('HSET', progress, 'done', '1', 'attempt', ARGV[7])
  redis.call('EXPIRE', events, ARGV[8])
  redis.call('EXPIRE', progress, ARGV[8])
  redis.call('EXPIRE', cancelled, ARGV[8])
end
redis.call('PUBLISH', ARGV[3], id)
return id
`;

export interface WorkerScripts {
  ppsdPublishEvent(...args: (string | number)[]): Promise<string | null>;
}

/** Registers the scripts on a connection (EVALSHA with EVAL fallback, also after a Redis restart). */
export function withScripts(redis: Redis): Redis & WorkerScripts {
  const r = redis as Redis & Partial<WorkerScripts>;
  if (!r.ppsdPublishEvent) {
    redis.defineCommand('ppsdPublishEvent', { numberOfKeys: 3, lua: PUBLISH_EVENT });
  }
  return redis as Redis & WorkerScripts;
}
