#!/usr/bin/env bash
# Set up, export the default model if there is none yet, and run the monitor on the microphone.
# Needs the Hugging Face hub once, for the export; after that it runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
model="models/bird_sounds_classification"
if [[ ! -f "$model/manifest.json" ]]; then
  scripts/setup.sh --export
  .venv/bin/station model export dima806/bird_sounds_classification --out "$model" --int8
else
  scripts/setup.sh
fi
exec .venv/bin/station run --config config.yaml "$@"
