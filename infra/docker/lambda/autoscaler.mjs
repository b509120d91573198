// Lambda entry of the backlog publisher (EventBridge schedule, one tick per invocation).
import { register } from 'tsx/esm/api';

register();
const mod = await import('../workers/autoscaler/src/lambda.ts');

export const handler = mod.handler;
