# recsys feature service: gRPC features over an online store (Redis, SQLite or memory). No torch,
# no ONNX Runtime. Build context: a wheelhouse (`make docker-wheels`), so nothing is fetched here.
#   docker build -f docker/feature-service.Dockerfile -t recsys/feature-service docker/wheels/serve
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG RECSYS_VERSION=0.1.0
COPY *.whl /wheels/
RUN python3 -m venv /opt/recsys \
 && /opt/recsys/bin/pip install --no-cache-dir --no-index --find-links /wheels "recsys==${RECSYS_VERSION}" \
 && /opt/recsys/bin/pip uninstall -y -q pip  # pip compiled the bytecode; the image needs no pip

FROM ${BASE_IMAGE}
COPY --from=build /opt/recsys /opt/recsys
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin recsys \
 && mkdir -p /var/lib/recsys && chown recsys /var/lib/recsys
USER 10001
WORKDIR /var/lib/recsys
ENV PATH=/opt/recsys/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["recsys", "health", "--server", "localhost:50051", "--service", "recsys.v1.FeatureService"]
ENTRYPOINT ["recsys"]
CMD ["serve", "features", "--store", "sqlite:///var/lib/recsys/features.sqlite", "--port", "50051"]
