# editx for GPU hosts: CUDA runtime, CUDA builds of torch and onnxruntime. The model
# folders are all it needs (the vocoder is editx's own); nothing is cloned.
# With no command it serves the API and the web page on port 7860 (compose.yaml).
#
#   docker build -t editx .
#   docker run -d --gpus device=1 --restart unless-stopped -p 7860:7860 -e EDITX_API_KEY=... \
#       -v /data/models:/models:ro -v editx-cache:/cache editx
#   docker run --gpus device=1 -v /data/models:/models:ro -v editx-cache:/cache \
#       -v "$PWD":/work editx batch manifest.csv --out-dir out
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv libsndfile1 \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip && pip install torch --index-url "$TORCH_INDEX"

COPY pyproject.toml README.md /opt/editx/
COPY editx_cli /opt/editx/editx_cli
RUN pip install "/opt/editx[serve]" \
 # onnxruntime and onnxruntime-gpu share a module name: keep only the GPU build
 && pip uninstall -y onnxruntime && pip install onnxruntime-gpu \
 # 4-bit loading for --variant bnb
 && pip install bitsandbytes

ENV EDITX_MODEL_DIR=/models/Step-Audio-EditX \
    EDITX_TOKENIZER_DIR=/models/Step-Audio-Tokenizer \
    EDITX_CACHE_DIR=/cache \
    EDITX_VOICES_DIR=/cache/voices \
    EDITX_HOST=0.0.0.0 \
    EDITX_PORT=7860 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
VOLUME ["/models", "/cache", "/work"]
WORKDIR /work
EXPOSE 7860
# Alive and answering: /healthz needs no key and does not load the model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDITX_PORT', '7860'), timeout=4)"
ENTRYPOINT ["editx"]
# Binding 0.0.0.0 needs EDITX_API_KEY (or --insecure behind a proxy that checks keys).
CMD ["serve"]
