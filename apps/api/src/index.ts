/** @ppsd/api: the Hono API. Entries: ./server (Node), ./lambda (AWS Lambda response streaming). */

export { createAdminKeyStore, createTenantStore, type TenantStore } from './adapters/tenants';
export { type AppDeps, createApp, OPENAPI_INFO, type PpsdApp } from './app';
export { bootstrapKeys } from './bootstrap';
export { type ApiConfig, ConfigError, defaultConfig, loadConfig } from './config';
export { type JobMeta, type JobView, jobMetaKey } from './jobs';
export {
  loadModelRegistry,
  type ModelInfo,
  type ModelRegistry,
  modelInfoFromPackage,
  modelInfoFromTokenizer,
  staticRegistry,
} from './models';
export { createRuntime, FAIL_FAST, type Runtime } from './runtime';
