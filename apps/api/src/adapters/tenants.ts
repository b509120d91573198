/**
 * Tenants, tenant API keys and admin keys in Redis. A key itself is never stored: each record, keyed by
 * the key's public prefix, holds HMAC-SHA256(PPSD_KEY_SECRET, key) (see @ppsd/contract api-keys.ts), so a
 * Redis dump reveals no key and no part of one. Authentication reads Redis on every request (no cache):
 * a revoked key or a disabled tenant is refused on the very next request.
 */
import {
  type ApiKeyRecord,
  type ApiKeyView,
  generateApiKey,
  hashApiKey,
  type KeyKind,
  keyPrefix,
  keys,
  PREFIX_PATTERN,
  sameHash,
  type TenantRecord,
} from '@ppsd/contract';
import type { Redis } from 'ioredis';

export type { ApiKeyRecord, TenantRecord };

export const TENANT_ID = /^[A-Za-z0-9._-]{1,64}$/;

export type RevokeResult = 'revoked' | 'already_revoked' | 'not_found';

const view = ({ hash: _hash, ...rec }: ApiKeyRecord): ApiKeyView => ({ ...rec, active: !rec.revokedAt });

/** The key records of one kind (tenant keys in keys.apiKeys, admin keys in keys.adminKeys). */
function keyring(redis: Redis, secret: string, kind: KeyKind) {
  const hashName = kind === 'admin' ? keys.adminKeys : keys.apiKeys;
  const all = async (): Promise<ApiKeyRecord[]> =>
    Object.entries(await redis.hgetall(hashName))
      .filter(([field]) => PREFIX_PATTERN.test(field))
      .map(([, v]) => JSON.parse(v) as ApiKeyRecord);
  const ring = {
    prefixOf: (key: string) => keyPrefix(secret, key, kind),

    /** Stores `key`; false (nothing changed) when its prefix exists already: a revoked key stays revoked. */
    async add(
      key: string,
      o: { tenant?: string; source: ApiKeyRecord['source']; createdBy?: string; now?: number },
    ): Promise<{ added: boolean; prefix: string }> {
      const prefix = ring.prefixOf(key);
      const rec: ApiKeyRecord = {
        prefix,
        tenant: o.tenant ?? '',
        hash: hashApiKey(secret, key),
        createdAt: o.now ?? Date.now(),
        source: o.source,
        ...(o.createdBy ? { createdBy: o.createdBy } : {}),
      };
      return { added: (await redis.hsetnx(hashName, prefix, JSON.stringify(rec))) === 1, prefix };
    },

    /** A fresh random key (returned only here: the caller shows it once). */
    async issue(o: { tenant?: string; createdBy?: string; now?: number }) {
      for (;;) {
        const key = generateApiKey(kind);
        const { added, prefix } = await ring.add(key, { ...o, source: 'issued' });
        if (added) return { key, prefix };
      }
    },

    /** The active record of `key`, or undefined (unknown, wrong hash, revoked). */
    async find(key: string): Promise<ApiKeyRecord | undefined> {
      const raw = await redis.hget(hashName, ring.prefixOf(key));
      if (!raw) return undefined;
      const rec = JSON.parse(raw) as ApiKeyRecord;
      if (!sameHash(rec.hash, hashApiKey(secret, key)) || rec.revokedAt) return undefined;
      return rec;
    },

    async get(prefix: string): Promise<ApiKeyRecord | undefined> {
      const raw = PREFIX_PATTERN.test(prefix) ? await redis.hget(hashName, prefix) : null;
      return raw ? (JSON.parse(raw) as ApiKeyRecord) : undefined;
    },

    async revoke(prefix: string, by: string, now = Date.now()): Promise<RevokeResult> {
      const rec = await ring.get(prefix);
      if (!rec) return 'not_found';
      if (rec.revokedAt) return 'already_revoked';
      await redis.hset(hashName, prefix, JSON.stringify({ ...rec, revokedAt: now, revokedBy: by }));
      return 'revoked';
    },

    async list(tenant?: string): Promise<ApiKeyView[]> {
      return (await all())
        .filter((r) => tenant === undefined || r.tenant === tenant)
        .sort((a, b) => a.createdAt - b.createdAt || a.prefix.localeCompare(b.prefix))
        .map(view);
    },

    async countActive(): Promise<number> {
      return (await all()).filter((r) => !r.revokedAt).length;
    },

    /**
     * Drops records written before keys were HMAC'd per prefix (field = sha256 of the key, record with a
     * 12-character prefix of the key itself): they leak short keys. Returns how many were removed.
     */
    async removeLegacy(): Promise<number> {
      const legacy = (await redis.hkeys(hashName)).filter((f) => !PREFIX_PATTERN.test(f));
      if (legacy.length) await redis.hdel(hashName, ...legacy);
      return legacy.length;
    },
  };
  return ring;
}

export function createTenantStore(redis: Redis, secret: string) {
  const tenantKeys = keyring(redis, secret, 'tenant');
  const store = {
    keys: tenantKeys,

    async getTenant(tenant: string): Promise<TenantRecord | undefined> {
      const raw = await redis.hget(keys.tenants, tenant);
      return raw ? (JSON.parse(raw) as TenantRecord) : undefined;
    },

    /** Creates the tenant unless it exists; returns its record and whether it was created. */
    async createTenant(
      tenant: string,
      now = Date.now(),
    ): Promise<{ created: boolean; tenant: TenantRecord }> {
      const rec: TenantRecord = { id: tenant, createdAt: now };
      const created = (await redis.hsetnx(keys.tenants, tenant, JSON.stringify(rec))) === 1;
      return { created, tenant: created ? rec : ((await store.getTenant(tenant)) ?? rec) };
    },

    async ensureTenant(tenant: string, now = Date.now()): Promise<TenantRecord> {
      return (await store.createTenant(tenant, now)).tenant;
    },

    async listTenants(): Promise<TenantRecord[]> {
      return Object.values(await redis.hgetall(keys.tenants))
        .map((v) => JSON.parse(v) as TenantRecord)
        .sort((a, b) => a.id.localeCompare(b.id));
    },

    /** Changes a tenant's record (disabled, allowed models); undefined when there is no such tenant. */
    async updateTenant(
      tenant: string,
      patch: { disabled?: boolean; models?: string[] | null },
    ): Promise<TenantRecord | undefined> {
      const rec = await store.getTenant(tenant);
      if (!rec) return undefined;
      const next: TenantRecord = { ...rec };
      if (patch.disabled !== undefined) {
        if (patch.disabled) next.disabled = true;
        else delete next.disabled;
      }
      if (patch.models !== undefined) {
        if (patch.models === null) delete next.models;
        else next.models = [...new Set(patch.models)];
      }
      await redis.hset(keys.tenants, tenant, JSON.stringify(next));
      return next;
    },

    /**
     * Registers a configured `key` for `tenant` (creating the tenant). False (nothing changed) when the
     * key is known already, for this or another tenant; a revoked key is never brought back.
     */
    async addKey(tenant: string, key: string, now = Date.now()): Promise<boolean> {
      await store.ensureTenant(tenant, now);
      return (await tenantKeys.add(key, { tenant, source: 'config', createdBy: 'bootstrap', now })).added;
    },

    /** Issues a fresh random key for an existing tenant; the only time the key is visible. */
    issueKey: (tenant: string, createdBy: string, now = Date.now()) =>
      tenantKeys.issue({ tenant, createdBy, now }),

    /** The tenant a key belongs to, or undefined for an unknown/revoked key or a disabled tenant. */
    async authenticate(key: string): Promise<TenantRecord | undefined> {
      const rec = await tenantKeys.find(key);
      if (!rec) return undefined;
      const tenant = await store.getTenant(rec.tenant);
      if (!tenant || tenant.disabled) return undefined;
      return tenant;
    },

    countActiveKeys: () => tenantKeys.countActive(),
  };
  return store;
}

export type TenantStore = ReturnType<typeof createTenantStore>;

export function createAdminKeyStore(redis: Redis, secret: string) {
  const ring = keyring(redis, secret, 'admin');
  return {
    ...ring,
    /** The prefix of an active admin key, or undefined. */
    async authenticate(key: string): Promise<string | undefined> {
      return (await ring.find(key))?.prefix;
    },
  };
}

export type AdminKeyStore = ReturnType<typeof createAdminKeyStore>;
