# recsys inference server on ONNX Runtime's CUDA build (onnxruntime-gpu, CUDA 13) over an NVIDIA
# CUDA runtime base. No torch. Run with `--gpus all` and `serve inference --device cuda`; the
# server fails loudly if CUDA is asked for and not obtained (it also runs on CPU with --device cpu).
#   docker build -f docker/inference-server-cuda.Dockerfile -t recsys/inference-server-cuda docker/wheels/gpu
# The wheelhouse must match the base's Python (Ubuntu 24.04: 3.12; `make docker-wheels CUDA_PYTHON=3.12`).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS build
ARG RECSYS_VERSION=0.1.0
# CUDA bases carry no Python: take the distribution's (skipped when the base has one)
RUN command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
     && rm -rf /var/lib/apt/lists/*)
COPY *.whl /wheels/
RUN python3 -m venv /opt/recsys \
 && /opt/recsys/bin/pip install --no-cache-dir --no-index --find-links /wheels "recsys[gpu]==${RECSYS_VERSION}" \
 && /opt/recsys/bin/pip uninstall -y -q pip  # pip compiled the bytecode; the image needs no pip

FROM ${BASE_IMAGE}
RUN command -v python3 >/dev/null \
 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
     && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/recsys /opt/recsys
RUN (id -u 10001 >/dev/null 2>&1 || useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin recsys) \
 && mkdir -p /models && chown 10001 /models
# recsys-health HOST:PORT [SERVICE]: exit 0 only when the server's gRPC health answers SERVING
# (container health checks). Plaintext through `recsys health`, or TLS trusting the CA in
# $RECSYS_HEALTH_TLS_CA, checking the name in $RECSYS_HEALTH_TLS_NAME when set.
RUN printf '%s\n' \
  '#!/opt/recsys/bin/python' \
  'import os, sys' \
  'target, service = sys.argv[1], (sys.argv[2:] or [""])[0]' \
  'ca = os.environ.get("RECSYS_HEALTH_TLS_CA")' \
  'if not ca:' \
  '    os.execvp("recsys", ["recsys", "health", "--server", target, "--service", service])' \
  'import grpc' \
  'from grpc_health.v1 import health_pb2, health_pb2_grpc' \
  'name = os.environ.get("RECSYS_HEALTH_TLS_NAME")' \
  'options = [("grpc.ssl_target_name_override", name)] if name else []' \
  'with open(ca, "rb") as pem, grpc.secure_channel(target, grpc.ssl_channel_credentials(pem.read()), options) as channel:' \
  '    try:' \
  '        request = health_pb2.HealthCheckRequest(service=service)' \
  '        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=3).status' \
  '    except grpc.RpcError as exc:' \
  '        sys.exit(f"{target}: {exc.code().name}")' \
  'print(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")' \
  'sys.exit(0 if status == health_pb2.HealthCheckResponse.SERVING else 1)' \
  > /opt/recsys/bin/recsys-health \
 && chmod 0755 /opt/recsys/bin/recsys-health
USER 10001
ENV PATH=/opt/recsys/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["recsys-health", "localhost:50052", "recsys.v1.InferenceService"]
# Listen on every interface: the container's port is what gets published (the CLI's own default
# is loopback). Without TLS or tokens the server logs a warning saying so.
ENV RECSYS_HOST=[::]
ENTRYPOINT ["recsys"]
CMD ["serve", "inference", "--device", "cuda", "--repo", "/models", "--model", "recs", "--features", "features:50051", "--port", "50052"]
