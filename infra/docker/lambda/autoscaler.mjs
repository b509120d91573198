// Lambda entry of the backlog publisher (EventBridge schedule, one tick per invocation): the esbuild
// bundle of workers/autoscaler/src/lambda.ts (`npm run build`).
export { handler } from '../dist/autoscaler/lambda.js';
