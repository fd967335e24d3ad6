# One image for every service role (api, extract-worker, predict-worker, flower, setup); the command picks it.
# CPU by default; the extract worker uses the GPU when the container gets one (onnxruntime-gpu picks CUDA only
# when /dev/nvidia* exists and its CUDA libraries load; check the log line "loaded model.onnx on ...").
FROM python:3.11-slim

# The code runs from /app (PYTHONPATH), not from site-packages: labels/ and weights/ resolve next to it.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONPATH=/app \
    VIDEOTAG_DATA_DIR=/data VIDEOTAG_WEIGHTS_DIR=/app/weights
WORKDIR /app

# Dependencies first (cached layer): install the project from an empty package tree to get its dependencies,
# then drop the project itself.
COPY pyproject.toml README.md* ./
RUN mkdir -p videotag extractor predictor api workers \
    && for p in videotag extractor predictor api workers; do touch $p/__init__.py; done \
    && pip install . flower \
    && pip uninstall -y videotag

COPY . .
RUN useradd --create-home --uid 1000 videotag \
    && mkdir -p /data /app/weights \
    && chown -R videotag /data /app/weights
USER videotag

EXPOSE 8000 5555
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD python -c "import videotag" || exit 1
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
