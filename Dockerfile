# syntax=docker/dockerfile:1
# One image for every pixelmill role; the role is the command: api (default), worker, simulate.
#   docker build -t pixelmill .
#   docker run --rm -e ... pixelmill worker

# Debian (glibc), not Alpine: sharp's prebuilt libvips packages in package-lock.json are the glibc ones.
ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: install every dependency and compile TypeScript to dist/ ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci
# .dockerignore admits only the sources the build needs (src/, workers/, tsconfig*.json).
COPY . .
RUN npm run build

# ---- runtime: production dependencies and the compiled JavaScript only ----
FROM ${NODE_IMAGE} AS runtime
# tini as PID 1 passes SIGTERM on to node and reaps zombies, so the worker's graceful drain
# (SHUTDOWN_GRACE) runs under Docker and Kubernetes alike, without relying on `--init`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
WORKDIR /app
# package.json also carries "type": "module", which Node needs to load dist/ as ESM.
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev
COPY --from=build /app/dist ./dist
# The base image's "node" user, by number so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "node", "dist/src/cli/main.js"]
CMD ["api"]
