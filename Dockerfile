# edm-art on NVIDIA GPUs: the CUDA build of the pinned torch, the project's other pinned dependencies.
#   docker build -t edm-art .
#   docker run --gpus all --rm -v $PWD/runs:/workspace/runs edm-art \
#       torchrun --standalone --nproc_per_node=8 train_art.py --network=URL --outdir=runs --steps=10
#   docker run --gpus all --rm -v $PWD/out:/workspace/out edm-art python generate_art.py --steps=10
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# CUDA flavour of the PyTorch wheel index (https://download.pytorch.org/whl/<flavour>) for the pinned torch version.
ARG TORCH_CUDA=cu130

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /workspace

# torch comes from the CUDA index at the version requirements.txt pins (the CPU wheel there is for CPU machines).
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir "$(grep '^torch==' requirements.txt)" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
    && pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY dnnlib/ dnnlib/
COPY torch_utils/ torch_utils/
COPY training/ training/
COPY edm/ edm/
COPY art/ art/
COPY assets/ assets/
COPY scripts/ scripts/
COPY generate_art.py train_art.py fid.py docker-entrypoint.sh ./

ENTRYPOINT ["/workspace/docker-entrypoint.sh"]
CMD ["python", "generate_art.py", "--help"]
