# recsys trainer: PyTorch (CPU wheel) -> ONNX artifact -> model repository. Runs as a one-shot job;
# `retrain.sh` (docker/retrain.sh) is the recipe compose and Kubernetes run: train, load the store,
# publish. Build context: the train wheelhouse with retrain.sh copied in (`make docker` does both):
#   cp docker/retrain.sh docker/wheels/train/ && docker build -f docker/trainer.Dockerfile -t recsys/trainer docker/wheels/train
# For CUDA training, build from a CUDA base and a wheelhouse holding a CUDA torch build instead.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG RECSYS_VERSION=0.1.0
COPY *.whl /wheels/
RUN python3 -m venv /opt/recsys \
 && /opt/recsys/bin/pip install --no-cache-dir --no-index --find-links /wheels "recsys[cpu,train]==${RECSYS_VERSION}" \
 && /opt/recsys/bin/pip uninstall -y -q pip  # pip compiled the bytecode; the image needs no pip

FROM ${BASE_IMAGE}
COPY --from=build /opt/recsys /opt/recsys
COPY retrain.sh /usr/local/bin/retrain.sh
RUN chmod 0755 /usr/local/bin/retrain.sh \
 && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin recsys \
 && mkdir -p /models /work && chown recsys /models /work
USER 10001
WORKDIR /work
ENV PATH=/opt/recsys/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLCONFIGDIR=/tmp/matplotlib
ENTRYPOINT ["recsys"]
CMD ["train", "--help"]
