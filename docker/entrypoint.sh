#!/usr/bin/env bash
# Entry point of both images: runs its arguments (default: `dvc repro`).
#   docker run IMAGE                                  -> dvc repro
#   docker run IMAGE prefect worker start --pool gpu  -> a Prefect worker
#   docker run IMAGE derta attacks                    -> any command
# For `dvc ...` in a copy of the project without .git (the image's /app), DVC
# runs without SCM; the MLflow SQLite store is created once before stages
# start, since two stages creating it at the same time race on the schema.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  set -- dvc repro
fi

if [ "$1" = "dvc" ]; then
  if [ ! -d .git ]; then
    [ -d .dvc ] || dvc init -q --no-scm
    dvc config --local core.no_scm true
  fi
  if [[ "${MLFLOW_TRACKING_URI:-}" == sqlite:* ]]; then
    python -m derta.cli mlflow-store "${MLFLOW_TRACKING_URI}"
  fi
fi

exec "$@"
