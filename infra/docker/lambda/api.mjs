// Lambda entry of the API image: the esbuild bundle of apps/api/src/lambda.ts (`npm run build`), whose
// `handler` is hono/aws-lambda streamHandle(app) (response streaming). No TypeScript at cold start.
export { handler } from '../dist/api/lambda.js';
