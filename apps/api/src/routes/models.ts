/** GET /v1/models and /v1/models/:id (OpenAI list shape). */
import { createRoute, z } from '@hono/zod-openapi';
import type { AppContext } from '../context';
import { router } from '../context';
import { notFound } from '../errors';
import type { ModelInfo } from '../models';
import { errorResponses, ModelList, ModelSchema } from '../schemas';

export const listModelsRoute = createRoute({
  method: 'get',
  path: '/v1/models',
  tags: ['OpenAI'],
  summary: 'Served models',
  security: [{ bearerAuth: [] }],
  responses: {
    200: { description: 'Model list', content: { 'application/json': { schema: ModelList } } },
    ...errorResponses(401),
  },
});

export const getModelRoute = createRoute({
  method: 'get',
  path: '/v1/models/{model}',
  tags: ['OpenAI'],
  summary: 'One served model',
  security: [{ bearerAuth: [] }],
  request: { params: z.object({ model: z.string().openapi({ param: { name: 'model', in: 'path' } }) }) },
  responses: {
    200: { description: 'The model', content: { 'application/json': { schema: ModelSchema } } },
    ...errorResponses(401, 404),
  },
});

const modelObject = (m: ModelInfo) => ({
  id: m.id,
  object: 'model' as const,
  created: m.created,
  owned_by: 'ppsd',
  max_model_len: m.maxContext,
  ...(m.dtype ? { dtype: m.dtype } : {}),
});

export function modelsRoutes(ctx: AppContext) {
  return router()
    .openapi(listModelsRoute, (c) =>
      c.json({ object: 'list' as const, data: ctx.models.list().map(modelObject) }, 200),
    )
    .openapi(getModelRoute, (c) => {
      const id = c.req.valid('param').model;
      const m = ctx.models.get(id);
      if (!m) throw notFound(`The model '${id}' does not exist.`, 'model_not_found', 'model');
      return c.json(modelObject(m), 200);
    });
}
