/**
 * API key storage (issue 14, item 2): Redis holds, per public prefix, an HMAC of the key with the server
 * secret, and nothing of the key itself; configured keys below the strength floor are refused at start.
 */
import { spawnSync } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { resolve } from 'node:path';
import { keys, keyWeakness } from '@ppsd/contract';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAdminKeyStore, createTenantStore } from '../../apps/api/src/adapters/tenants';
import { bootstrapKeys } from '../../apps/api/src/bootstrap';
import { ConfigError, loadConfig } from '../../apps/api/src/config';
import { TEST_KEY_SECRET } from '../helpers/keys';
import { logLines } from '../helpers/logs';
import { type RedisServer, startRedis } from '../helpers/redis-server';
import { ROOT } from '../helpers/stack';

let server: RedisServer;
let redis: import('ioredis').Redis;

beforeAll(async () => {
  server = await startRedis();
  const { Redis } = await import('ioredis');
  redis = new Redis(server.url);
});
afterAll(async () => {
  redis?.disconnect();
  await server?.stop();
});

/** Every substring of `s` of length `n`. */
const grams = (s: string, n = 5) => Array.from({ length: s.length - n + 1 }, (_, i) => s.slice(i, i + n));

async function storedRecords(): Promise<string> {
  const [tenantKeys, adminKeys] = await Promise.all([
    redis.hgetall(keys.apiKeys),
    redis.hgetall(keys.adminKeys),
  ]);
  return JSON.stringify({ tenantKeys, adminKeys });
}

describe('stored key records', () => {
  it('hold no substring of a configured key and an HMAC with the server secret, not sha256(key)', async () => {
    const key = 'Zq4TgW9pLm2XvR7sKd3YbN8cHf6JeA1u'; // 32 characters in no issued format
    const tenants = createTenantStore(redis, TEST_KEY_SECRET);
    expect(await tenants.addKey('acme', key)).toBe(true);
    const stored = await storedRecords();
    for (const g of grams(key)) expect(stored).not.toContain(g);
    const sha = createHash('sha256').update(key).digest('hex');
    expect(stored).not.toContain(sha);
    const hmac = createHmac('sha256', TEST_KEY_SECRET).update(key).digest('hex');
    expect(stored).toContain(hmac);
    const prefix = tenants.keys.prefixOf(key);
    expect(prefix).toMatch(/^cfg_[a-z2-7]{12}$/);
    expect((await tenants.authenticate(key))?.id).toBe('acme');
  });

  it('hold nothing of an issued key but its public prefix, which is not part of the secret', async () => {
    const tenants = createTenantStore(redis, TEST_KEY_SECRET);
    const admins = createAdminKeyStore(redis, TEST_KEY_SECRET);
    await tenants.ensureTenant('globex');
    const issued = await tenants.issueKey('globex', 'test');
    const admin = await admins.issue({ createdBy: 'test' });
    for (const { key, prefix } of [issued, admin]) {
      expect(key.startsWith(`${prefix}_`)).toBe(true);
      const secret = key.slice(prefix.length + 1);
      expect(secret).toHaveLength(43);
      const stored = await storedRecords();
      for (const g of grams(secret)) expect(stored).not.toContain(g);
      expect(stored).not.toContain(createHash('sha256').update(key).digest('hex'));
    }
    expect(issued.prefix).toMatch(/^ppsd_[a-z0-9]{12}$/);
    expect(admin.prefix).toMatch(/^ppsd_admin_[a-z0-9]{12}$/);
    // an admin key is no tenant key and the other way round
    expect(await tenants.authenticate(admin.key)).toBeUndefined();
    expect(await admins.authenticate(issued.key)).toBeUndefined();
    expect(await admins.authenticate(admin.key)).toBe(admin.prefix);
  });

  it('are useless without the server secret: another secret authenticates nothing', async () => {
    const tenants = createTenantStore(redis, TEST_KEY_SECRET);
    await tenants.ensureTenant('initech');
    const { key } = await tenants.issueKey('initech', 'test');
    expect((await tenants.authenticate(key))?.id).toBe('initech');
    const other = createTenantStore(redis, 'a-different-secret-of-32-chars-or-more');
    expect(await other.authenticate(key)).toBeUndefined();
  });

  it('of the old format (sha256 field, 12-character prefix of the key) are removed at start', async () => {
    const legacyKey = 'sk-acme-test-1';
    const field = createHash('sha256').update(legacyKey).digest('hex');
    await redis.hset(keys.apiKeys, field, JSON.stringify({ tenant: 'acme', prefix: legacyKey.slice(0, 12) }));
    const logs: string[] = [];
    const tenants = createTenantStore(redis, TEST_KEY_SECRET);
    const r = await bootstrapKeys(tenants, [], (m) => logs.push(m), {
      store: createAdminKeyStore(redis, TEST_KEY_SECRET),
      keys: [],
    });
    expect(r.legacyRemoved).toBe(1);
    expect(await redis.hexists(keys.apiKeys, field)).toBe(0);
    expect((await storedRecords()).includes('sk-acme-test')).toBe(false);
    expect(logs.join('\n')).toMatch(/removed 1 key records of the old unkeyed format/);
  });
});

describe('configured keys', () => {
  const base = { PPSD_MODELS: 'stories260K', PPSD_KEY_SECRET: TEST_KEY_SECRET };
  const problems = (env: Record<string, string>): string[] => {
    try {
      loadConfig({ ...base, ...env });
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
    return [];
  };

  it('below the documented floor (32 characters, 128 estimated bits) are refused, without echoing them', () => {
    const weak = problems({
      PPSD_BOOTSTRAP_KEYS: 'acme:sk-acme-test-1,globex:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
      PPSD_ADMIN_KEYS: 'admin-password-1',
    });
    expect(weak).toHaveLength(3);
    expect(weak[0]).toMatch(
      /PPSD_BOOTSTRAP_KEYS: the key of tenant 'acme' \(entry 1\) is 14 characters, at least 32/,
    );
    expect(weak[1]).toMatch(/tenant 'globex' \(entry 2\) has about 0 bits of entropy, at least 128/);
    expect(weak[2]).toMatch(/PPSD_ADMIN_KEYS: admin key 1 is 16 characters/);
    for (const p of weak) {
      expect(p).not.toContain('sk-acme-test-1');
      expect(p).not.toContain('admin-password-1');
    }
    expect(keyWeakness('b421e2dba10053a5ae6d3e819d6ef805')).toMatch(/bits of entropy/); // 16 bytes of hex
  });

  it('PPSD_KEY_SECRET is required and must be strong', () => {
    expect(problems({ PPSD_KEY_SECRET: '' }).join('\n')).toMatch(/PPSD_KEY_SECRET is required/);
    expect(problems({ PPSD_KEY_SECRET: 'short-secret' }).join('\n')).toMatch(
      /PPSD_KEY_SECRET is 12 characters/,
    );
    expect(problems({ PPSD_ADMIN_KEYS: 'X7dkP2qLr9VbN4mTz8WcY3fHs6JgE1aQu5' })).toEqual([]);
  });

  it('the API refuses to start with a weak key, naming the variable (exit 2)', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', resolve(ROOT, 'apps/api/src/server.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        NODE_NO_WARNINGS: '1',
        PPSD_MODELS: 'stories260K',
        PPSD_KEY_SECRET: TEST_KEY_SECRET,
        PPSD_BOOTSTRAP_KEYS: 'acme:sk-acme-test-1',
        PPSD_REDIS_URL: server.url,
      },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status).toBe(2);
    // one JSON log line on stdout naming each problem, never the key itself
    const fatal = logLines(r.stdout).find((l) => l.level === 'fatal');
    expect(fatal, r.stdout + r.stderr).toMatchObject({ service: 'api' });
    expect(((fatal?.problems ?? []) as string[]).join('\n')).toMatch(
      /PPSD_BOOTSTRAP_KEYS: the key of tenant 'acme' \(entry 1\) is 14 characters/,
    );
    expect(r.stdout + r.stderr).not.toContain('sk-acme-test-1');
  });
});
