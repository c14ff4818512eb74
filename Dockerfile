# segdistill deployment image for x86_64 servers with an NVIDIA GPU.
# Base: NVIDIA's PyTorch container (CUDA, cuDNN, TensorRT 10.x with its Python bindings, PyTorch).
# Engines are specific to a GPU and a TensorRT version, so none is built here: the entrypoint builds
# it on the first start, caches it (with its timing cache) in the /cache volume and runs the benchmark.
#   docker build -t segdistill:server .
#   docker run --rm --gpus all -v "$PWD/runs/export_camvid_student/final:/models:ro" -v segdistill-cache:/cache \
#       -e PRECISION=fp16 segdistill:server
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/segdistill
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY distill ./distill
COPY kernels ./kernels
COPY export ./export
COPY deploy ./deploy
COPY study ./study

# Keep the image's own torch / torchvision (built for its CUDA): pin them to what is installed, and
# everything else to the tested versions of requirements/lock.txt (less its torch / torchvision).
RUN python -c "import torch, torchvision; print(f'torch=={torch.__version__}'); print(f'torchvision=={torchvision.__version__}')" > /tmp/keep-base.txt \
    && grep -vE '^(torch|torchvision)==' requirements/lock.txt > /tmp/lock.txt \
    && python -m pip install --no-cache-dir -c /tmp/keep-base.txt -c /tmp/lock.txt ".[deploy-gpu]"

RUN useradd --create-home --uid 10001 segdistill \
    && mkdir -p /cache /models \
    && chown segdistill:segdistill /cache \
    && python3 -c "import tensorrt, torch; print('TensorRT', tensorrt.__version__, 'torch', torch.__version__)"
USER segdistill
VOLUME ["/cache"]
ENTRYPOINT ["/opt/segdistill/deploy/entrypoint.sh"]
