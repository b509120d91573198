# syntax=docker/dockerfile:1.7
# ppsd GPU worker: CUDA 12 + cuDNN 9 runtime, Node 20, the repository in /app, and the ONNX Runtime
# CUDA execution provider next to onnxruntime-node's libonnxruntime.so.1.
#
#   docker build -f infra/docker/worker.Dockerfile -t ppsd-worker .
#
# ORT_VERSION must equal the onnxruntime-node version in package-lock.json (test/infra checks it, and
# the build fails if node_modules disagrees): the provider libraries are ABI-bound to libonnxruntime.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG NODE_IMAGE=node:20-bookworm-slim
ARG ORT_VERSION=1.30.0

FROM ${NODE_IMAGE} AS node

# Only the package manifests, so `npm ci` is cached until a dependency changes.
FROM ${NODE_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name package.json ! -name package-lock.json -delete \
 && find . -type d -empty -delete

FROM ${CUDA_IMAGE} AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl unzip tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version

FROM base AS deps
ARG ORT_VERSION
WORKDIR /app
COPY --from=manifests /src/ ./
# The install script of onnxruntime-node would download the CUDA providers at install time; skip it
# and bake the exact providers in below instead (reproducible, no network at container start).
RUN --mount=type=cache,target=/root/.npm \
    ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
RUN set -eux; \
    installed="$(node -p "require('onnxruntime-node/package.json').version")"; \
    if [ "$installed" != "$ORT_VERSION" ]; then \
      echo "onnxruntime-node is $installed but ORT_VERSION is $ORT_VERSION" >&2; exit 1; \
    fi; \
    dest=node_modules/onnxruntime-node/bin/napi-v6/linux/x64; \
    test -f "$dest/libonnxruntime.so.1"; \
    curl -fsSL --retry 5 -o /tmp/ort-gpu.nupkg \
      "https://www.nuget.org/api/v2/package/Microsoft.ML.OnnxRuntime.Gpu.Linux/${ORT_VERSION}"; \
    unzip -q -o /tmp/ort-gpu.nupkg 'runtimes/linux-x64/native/*' -d /tmp/ort-gpu; \
    cp /tmp/ort-gpu/runtimes/linux-x64/native/libonnxruntime_providers_shared.so "$dest/"; \
    cp /tmp/ort-gpu/runtimes/linux-x64/native/libonnxruntime_providers_cuda.so "$dest/"; \
    rm -rf /tmp/ort-gpu /tmp/ort-gpu.nupkg; \
    ls -l "$dest"

FROM base AS worker
ARG ORT_VERSION
LABEL org.opencontainers.image.title="ppsd-worker" \
      org.opencontainers.image.description="ppsd GPU worker (BullMQ consumer, onnxruntime-node + CUDA EP)" \
      ai.ppsd.onnxruntime.version="${ORT_VERSION}"
WORKDIR /app
COPY --from=deps /app/ ./
COPY . .
RUN npm run build
ENV NODE_ENV=production \
    PPSD_CACHE_DIR=/var/cache/ppsd \
    PPSD_DEVICES=auto \
    PPSD_DECODER=ppsd \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/app/node_modules/onnxruntime-node/bin/napi-v6/linux/x64
RUN mkdir -p /var/cache/ppsd \
 && node -e "require('onnxruntime-node'); console.log('onnxruntime-node loads')"
VOLUME ["/var/cache/ppsd"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "--enable-source-maps", "dist/worker/main.js"]
