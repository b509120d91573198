/**
 * AWS Lambda entry (Function URL with InvokeMode RESPONSE_STREAM): `handler` streams the same Hono app's
 * responses, SSE included. The runtime (config from env, Redis, models) is built on the first invocation
 * and reused while the execution environment lives.
 */
import type { Hono } from 'hono';
import { streamHandle } from 'hono/aws-lambda';
import { loadConfig } from './config';
import { createRuntime, type Runtime } from './runtime';

/** The streaming handler for any app (tests feed it their own). Needs the `awslambda` runtime global. */
export const createLambdaHandler = (app: Pick<Hono, 'fetch'>) => streamHandle(app as Hono);

let runtime: Promise<Runtime> | undefined;
const getRuntime = () => {
  runtime ??= createRuntime(loadConfig(process.env), { processMetrics: false }).catch((err) => {
    runtime = undefined;
    throw err;
  });
  return runtime;
};

export const handler = createLambdaHandler({
  fetch: async (req: Request, env?: unknown, ctx?: unknown) =>
    (await getRuntime()).app.fetch(req, env as never, ctx as never),
} as Pick<Hono, 'fetch'>);
