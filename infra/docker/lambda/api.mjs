// Lambda entry of the API image: register tsx, then load the TypeScript handler from source.
// apps/api/src/lambda.ts exports `handler` = hono/aws-lambda streamHandle(app) (response streaming).
import { register } from 'tsx/esm/api';

register();
const mod = await import('../apps/api/src/lambda.ts');

export const handler = mod.handler;
