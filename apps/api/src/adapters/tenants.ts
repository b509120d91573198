/**
 * Tenants and API keys. Keys are never stored: `keys.apiKeys` maps sha256(key) to an ApiKeyRecord, so a
 * leaked Redis dump reveals no usable key. Revoking marks the record; authentication then fails.
 */
import { createHash, randomBytes } from 'node:crypto';
import { keys } from '@ppsd/contract';
import type { Redis } from 'ioredis';

export interface TenantRecord {
  id: string;
  createdAt: number;
  disabled?: boolean;
}

export interface ApiKeyRecord {
  tenant: string;
  /** First characters of the key, to recognise it in listings without storing it. */
  prefix: string;
  createdAt: number;
  revokedAt?: number;
}

export const hashKey = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

export const generateKey = (): string => `sk-ppsd-${randomBytes(24).toString('base64url')}`;

export function createTenantStore(redis: Redis) {
  const store = {
    async ensureTenant(tenant: string, now = Date.now()): Promise<TenantRecord> {
      const rec: TenantRecord = { id: tenant, createdAt: now };
      await redis.hsetnx(keys.tenants, tenant, JSON.stringify(rec));
      return JSON.parse((await redis.hget(keys.tenants, tenant)) ?? JSON.stringify(rec)) as TenantRecord;
    },

    async getTenant(tenant: string): Promise<TenantRecord | undefined> {
      const raw = await redis.hget(keys.tenants, tenant);
      return raw ? (JSON.parse(raw) as TenantRecord) : undefined;
    },

    async listTenants(): Promise<TenantRecord[]> {
      return Object.values(await redis.hgetall(keys.tenants)).map((v) => JSON.parse(v) as TenantRecord);
    },

    /**
     * Registers `key` for `tenant` (creating the tenant). Returns false (and changes nothing) when the key
     * already exists, for this or another tenant; a revoked key is never brought back.
     */
    async addKey(tenant: string, key: string, now = Date.now()): Promise<boolean> {
      await store.ensureTenant(tenant, now);
      const rec: ApiKeyRecord = { tenant, prefix: key.slice(0, 12), createdAt: now };
      return (await redis.hsetnx(keys.apiKeys, hashKey(key), JSON.stringify(rec))) === 1;
    },

    /** Creates a fresh random key for `tenant` and returns it (the only time it is visible). */
    async createKey(tenant: string, now = Date.now()): Promise<string> {
      const key = generateKey();
      await store.addKey(tenant, key, now);
      return key;
    },

    /** Revokes a key; true when it existed and was active. */
    async revokeKey(key: string, now = Date.now()): Promise<boolean> {
      const h = hashKey(key);
      const raw = await redis.hget(keys.apiKeys, h);
      if (!raw) return false;
      const rec = JSON.parse(raw) as ApiKeyRecord;
      if (rec.revokedAt) return false;
      rec.revokedAt = now;
      await redis.hset(keys.apiKeys, h, JSON.stringify(rec));
      return true;
    },

    /** The tenant a key belongs to, or undefined for an unknown/revoked key or disabled tenant. */
    async authenticate(key: string): Promise<string | undefined> {
      const raw = await redis.hget(keys.apiKeys, hashKey(key));
      if (!raw) return undefined;
      const rec = JSON.parse(raw) as ApiKeyRecord;
      if (rec.revokedAt) return undefined;
      const tenant = await store.getTenant(rec.tenant);
      if (!tenant || tenant.disabled) return undefined;
      return rec.tenant;
    },

    /** Active key count (bootstrap uses it to decide whether to mint a first key). */
    async countActiveKeys(): Promise<number> {
      const all = Object.values(await redis.hgetall(keys.apiKeys));
      return all.filter((v) => !(JSON.parse(v) as ApiKeyRecord).revokedAt).length;
    },
  };
  return store;
}

export type TenantStore = ReturnType<typeof createTenantStore>;
