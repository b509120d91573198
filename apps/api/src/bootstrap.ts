/**
 * First-run tenants and keys, on every start (idempotent; a revoked key stays revoked):
 * - PPSD_BOOTSTRAP_KEYS="acme:KEY1,globex:KEY2" registers each key for its tenant; with none given and no
 *   active key at all, tenant 'default' and a random key are created and the key is printed once.
 * - PPSD_ADMIN_KEYS="KEY1,KEY2" registers admin keys; with none given and no active admin key, one is
 *   created and printed once (the first admin key of a deployment).
 * - Key records of the old format (sha256 of the key next to its first 12 characters) are removed.
 */
import type { AdminKeyStore, TenantStore } from './adapters/tenants';
import type { BootstrapKey } from './config';

export interface BootstrapResult {
  added: string[];
  created?: { tenant: string; key: string };
  adminAdded: number;
  adminCreated?: { prefix: string; key: string };
  legacyRemoved: number;
}

export async function bootstrapKeys(
  tenants: TenantStore,
  keys: BootstrapKey[],
  log: (msg: string) => void = (m) => console.log(m),
  admin?: { store: AdminKeyStore; keys: string[] },
): Promise<BootstrapResult> {
  const legacyRemoved = (await tenants.keys.removeLegacy()) + ((await admin?.store.removeLegacy()) ?? 0);
  if (legacyRemoved)
    log(`bootstrap: removed ${legacyRemoved} key records of the old unkeyed format; re-issue those keys`);
  const added: string[] = [];
  for (const { tenant, key } of keys) {
    if (await tenants.addKey(tenant, key)) added.push(tenant);
  }
  if (added.length) log(`bootstrap: registered keys for ${added.join(', ')}`);
  const result: BootstrapResult = { added, adminAdded: 0, legacyRemoved };

  if (admin) {
    for (const key of admin.keys) {
      if ((await admin.store.add(key, { source: 'config', createdBy: 'bootstrap' })).added)
        result.adminAdded++;
    }
    if (result.adminAdded) log(`bootstrap: registered ${result.adminAdded} admin key(s)`);
    if (admin.keys.length === 0 && (await admin.store.countActive()) === 0) {
      const { key, prefix } = await admin.store.issue({ createdBy: 'bootstrap' });
      result.adminCreated = { key, prefix };
      log(`bootstrap: no admin key configured; created admin key ${prefix} (shown once):\n${key}`);
    }
  }

  if (keys.length > 0 || (await tenants.countActiveKeys()) > 0) return result;
  const tenant = 'default';
  await tenants.ensureTenant(tenant);
  const { key } = await tenants.issueKey(tenant, 'bootstrap');
  log(`bootstrap: no API keys configured; created tenant '${tenant}' with key:\n${key}`);
  return { ...result, created: { tenant, key } };
}
