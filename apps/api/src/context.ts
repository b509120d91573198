/** The pieces every route gets: built once in createApp from its dependencies. */
import { OpenAPIHono } from '@hono/zod-openapi';
import type { Logger } from '@ppsd/contract/log';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { AuditLog } from './adapters/audit';
import type { Quota } from './adapters/quota';
import type { JobEvents } from './adapters/redis-events';
import type { AdminKeyStore, TenantStore } from './adapters/tenants';
import type { ApiConfig } from './config';
import { invalid } from './errors';
import type { JobService } from './jobs';
import type { Metrics } from './metrics';
import type { ModelRegistry } from './models';

export interface AppEnv {
  Variables: {
    tenant: string;
    requestId: string;
    /** The request's logger: reqId on every line, tenant (or admin) once authenticated. */
    log: Logger;
    /** The `code` of the error answer, for the access line. */
    errorCode?: string;
    /** /admin/: the prefix of the admin key that made the request. */
    admin: string;
    /** /admin/: what the handler did, for the audit entry (action name, target, details). */
    audit: { action: string; target?: string; detail?: Record<string, unknown> };
  };
}

export interface AppContext {
  redis: Redis;
  queues: (model: string) => Queue;
  models: ModelRegistry;
  config: ApiConfig;
  events: JobEvents;
  quota: Quota;
  tenants: TenantStore;
  adminKeys: AdminKeyStore;
  audit: AuditLog;
  jobs: JobService;
  metrics: Metrics;
  clock: () => number;
  /** The service logger (requests use `c.get('log')`, its child). */
  log: Logger;
}

/** A router whose validation failures become OpenAI-shaped 400s (thrown to the app's error handler). */
export function router() {
  return new OpenAPIHono<AppEnv>({
    defaultHook: (result) => {
      if (!result.success) {
        const issue = result.error.issues[0];
        const path = issue?.path.map(String).join('.') || null;
        const what = result.target === 'json' ? 'body' : result.target;
        throw invalid(
          path
            ? `Invalid ${what} parameter '${path}': ${issue.message}`
            : `Invalid ${what}: ${issue?.message}`,
          path,
          'invalid_request',
        );
      }
    },
  });
}
