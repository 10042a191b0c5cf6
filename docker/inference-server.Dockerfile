# recsys inference server on ONNX Runtime (CPU build). No torch: the image serves exported models.
#   docker build -f docker/inference-server.Dockerfile -t recsys/inference-server docker/wheels/serve
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG RECSYS_VERSION=0.1.0
COPY *.whl /wheels/
RUN python3 -m venv /opt/recsys \
 && /opt/recsys/bin/pip install --no-cache-dir --no-index --find-links /wheels "recsys[cpu]==${RECSYS_VERSION}" \
 && /opt/recsys/bin/pip uninstall -y -q pip  # pip compiled the bytecode; the image needs no pip

FROM ${BASE_IMAGE}
COPY --from=build /opt/recsys /opt/recsys
# /models: where a model repository (REPO/MODEL/VERSION/) is mounted; owned by the service user
# so a fresh named volume mounted there is writable by the trainer job too (same uid)
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin recsys \
 && mkdir -p /models && chown recsys /models
USER 10001
ENV PATH=/opt/recsys/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["recsys", "health", "--server", "localhost:50052", "--service", "recsys.v1.InferenceService"]
ENTRYPOINT ["recsys"]
CMD ["serve", "inference", "--repo", "/models", "--model", "recs", "--features", "features:50051", "--port", "50052"]
