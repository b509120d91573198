# syntax=docker/dockerfile:1.7
# ppsd API (and the backlog publisher), from the same source, two targets:
#
#   docker build -f infra/docker/api.Dockerfile --target server -t ppsd-api .   # Node HTTP server
#   docker build -f infra/docker/api.Dockerfile --target lambda -t ppsd-lambda . # AWS Lambda image
#
# The lambda image carries two handlers: lambda/api.handler (the API behind a function URL with
# response streaming) and lambda/autoscaler.handler (the scheduled backlog publisher). Terraform picks
# one per function with image_config.command.
ARG NODE_IMAGE=node:20-bookworm-slim
ARG LAMBDA_IMAGE=public.ecr.aws/lambda/nodejs:20

# Only the package manifests, so `npm ci` is cached until a dependency changes.
FROM ${NODE_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name package.json ! -name package-lock.json -delete \
 && find . -type d -empty -delete

FROM ${NODE_IMAGE} AS server-deps
WORKDIR /app
COPY --from=manifests /src/ ./
# No GPU here: skip onnxruntime-node's CUDA provider download.
RUN --mount=type=cache,target=/root/.npm \
    ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund

FROM ${NODE_IMAGE} AS server
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=server-deps /app/ ./
COPY . .
# Plain JavaScript at start-up (esbuild bundles in dist/; see scripts/build.ts and docs/BENCHMARKS.md).
RUN npm run build
ENV NODE_ENV=production PORT=8080
USER node
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "--enable-source-maps", "dist/api/server.js"]

# Dependencies installed inside the Lambda base image itself, so native modules match its libc.
FROM ${LAMBDA_IMAGE} AS lambda-deps
WORKDIR /var/task
COPY --from=manifests /src/ ./
RUN --mount=type=cache,target=/root/.npm \
    ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund

FROM ${LAMBDA_IMAGE} AS lambda
WORKDIR /var/task
COPY --from=lambda-deps /var/task/ ./
COPY . .
RUN npm run build
COPY infra/docker/lambda/ ./lambda/
ENV NODE_ENV=production
# The default handler is the API; the publisher function overrides the command.
CMD ["lambda/api.handler"]
