# transferkit serve on the CPU, for one bundle baked into the image (see docs/serving.md, "In a container").
#
#   docker build --build-arg BUNDLE=runs/parts/model -t parts-server .
#   docker run --rm -p 8000:8000 -e TRANSFERKIT_TOKEN=change-me parts-server
#
# Everything is installed while building; at run time nothing is downloaded (the bundle holds its weights, and a
# text bundle its tokenizer and encoder config; HF_HUB_OFFLINE makes any attempt fail at once instead of waiting).
FROM python:3.11-slim

# libsndfile reads audio uploads; nothing else is needed from the system
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY transferkit ./transferkit
# the CPU build of torch (the default one from PyPI carries CUDA libraries a CPU server does not need); medical:
# DICOM and NIfTI uploads
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch torchvision \
    && pip install --no-cache-dir ".[serve,medical]"

ARG BUNDLE=model
COPY ${BUNDLE} /model

ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf TRANSFERKIT_CACHE=/tmp/transferkit-cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER nobody
EXPOSE 8000
# another address than loopback needs a bearer token: serve refuses to start without TRANSFERKIT_TOKEN
CMD ["transferkit", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
