# videotag images. Two targets from one file (docker-compose.yml builds both):
#   runtime  the API, the Celery workers and Flower: ONNX Runtime, PyAV/OpenCV, FastAPI, Celery — no torch
#   full     runtime + torch/onnx/the model packages: `videotag setup` (exports the default models into the weights
#            volume), training, importers. The default target of a plain `docker build .`.
# CPU by default; the extract worker uses the GPU when the container gets one (onnxruntime-gpu picks CUDA only
# when /dev/nvidia* exists and its CUDA libraries load; check the log line "loaded model.onnx on ...").
#
# Build arguments:
#   BASE_IMAGE       a Debian-like image with Python 3.11+ and pip (default python:3.11-slim); the compose test
#                    points it at a stand-in built from Debian packages where Docker Hub is unreachable
#   ORT_PACKAGE      onnxruntime-gpu (default: CUDA when the container gets a GPU, else CPU) or onnxruntime
#                    (CPU only, ~280 MB smaller) for hosts that never give the containers a GPU
#   TORCH_INDEX_URL  where the CPU build of torch comes from (full target only); empty: the configured indexes
# Versions are pinned by constraints.txt; the requirement lists come from pyproject.toml
# (scripts/image_requirements.py), so the images and the package never disagree.
ARG BASE_IMAGE=python:3.11-slim

# ---- deps: the serving dependencies (a cached layer until pyproject.toml or constraints.txt change) ----------------
FROM ${BASE_IMAGE} AS deps
ARG ORT_PACKAGE=onnxruntime-gpu
# The code runs from /app (PYTHONPATH), not from site-packages: labels/ and weights/ resolve next to it.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONPATH=/app \
    VIDEOTAG_DATA_DIR=/data VIDEOTAG_WEIGHTS_DIR=/app/weights
WORKDIR /app
COPY pyproject.toml constraints.txt scripts/image_requirements.py /tmp/req/
RUN python /tmp/req/image_requirements.py runtime --pyproject /tmp/req/pyproject.toml --ort "$ORT_PACKAGE" \
       > /tmp/req/runtime.txt \
    && pip install --no-cache-dir -r /tmp/req/runtime.txt -c /tmp/req/constraints.txt \
    && rm -rf /tmp/req
RUN (getent group 1000 >/dev/null || groupadd --gid 1000 videotag) \
    && useradd --create-home --uid 1000 --gid 1000 videotag

# ---- runtime ------------------------------------------------------------------------------------------------------
FROM deps AS runtime
COPY . .
# The service runs as uid 1000. Every directory compose mounts a named volume on must exist in the image, owned
# by that user: Docker creates an empty named volume with the ownership of the image's directory (root when the
# directory is missing, and then every upload and every stored feature fails with "Permission denied").
# After COPY, which leaves what it writes (weights/README.md included) to root.
RUN mkdir -p /data/features /data/results /data/uploads /app/weights /videos \
    && chown -R 1000:1000 /data /app/weights \
    && python -m compileall -q -x '/(tests|benchmarks|videos)/' /app
USER 1000:1000
EXPOSE 8000 5555
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD python -c "import videotag" || exit 1
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]

# ---- full-deps: + what model export and training need (torch CPU build, onnx, the pretrained backbone) -----------
FROM deps AS full-deps
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml constraints.txt scripts/image_requirements.py /tmp/req/
RUN python /tmp/req/image_requirements.py setup --pyproject /tmp/req/pyproject.toml > /tmp/req/setup.txt \
    && pip install --no-cache-dir -r /tmp/req/setup.txt -c /tmp/req/constraints.txt \
       ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    && rm -rf /tmp/req

# ---- full (default target) ----------------------------------------------------------------------------------------
FROM full-deps AS full
COPY . .
# The volume mount points, owned by the service's user (as in runtime)
RUN mkdir -p /data/features /data/results /data/uploads /app/weights /videos \
    && chown -R 1000:1000 /data /app/weights \
    && python -m compileall -q -x '/(tests|benchmarks|videos)/' /app
USER 1000:1000
EXPOSE 8000 5555
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD python -c "import videotag" || exit 1
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
