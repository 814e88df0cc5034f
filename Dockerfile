# CPU image: runs the default pipeline (`dvc repro`, the tiny mini-world profile).
#   docker build -t derta .
#   docker run --rm derta                      # dvc repro inside /app
#   docker run --rm derta derta attacks        # any command
# torch is the CPU build pinned in constraints.txt (torch==X+cpu), served by
# the PyTorch CPU index given as TORCH_INDEX_URL.
FROM python:3.11.13-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# DL3064 flags the substring TOKEN in TOKENIZERS_PARALLELISM; no secret is set here.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    MLFLOW_TRACKING_URI=sqlite:///mlflow.db

# git: DVC and scmrepo call it when /app is a mounted checkout. Debian's
# bookworm repository keeps only the current patch release of a package, so an
# exact apt pin would break the build at the next security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --shell /bin/bash derta \
 && install -d -o derta -g derta /app
WORKDIR /app

# Dependencies first, from pyproject + constraints only, so that a source
# change does not reinstall torch.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY --chown=derta:derta . .
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
 && rm -rf build ./*.egg-info

USER 10001
ENTRYPOINT ["bash", "/app/docker/entrypoint.sh"]
CMD ["dvc", "repro"]
