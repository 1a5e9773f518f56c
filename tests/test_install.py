"""scripts/install.sh into a scratch root (--prefix), and the systemd unit it installs.

The installer runs as a user would run it, as a subprocess, from a copy of the checkout with a
model folder in it. No systemd runs as PID 1 here, so the unit is checked with systemd-analyze:
`verify` inside the installed root (its ExecStart= paths must resolve there) and the offline
security exposure. The module's first install takes ~20 s (a venv with the daemon's dependencies).
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from conftest import REPO, require_or_skip
from station.config import load_settings, read_secret
from station.model_folder import Manifest, load_folder, write_folder

NAME = "field-station"
UNIT = Path("etc/systemd/system/field-station.service")
WANTS = Path("etc/systemd/system/multi-user.target.wants/field-station.service")
CODE, STATE, CONFIG_DIR = Path("opt/field-station"), Path("var/lib/field-station"), Path("etc/field-station")
CHECKOUT_PARTS = ("pyproject.toml", "README.md", "config.yaml", "station", "systemd", "scripts")
MAX_EXPOSURE = 2.0


def make_model_folder(destination: Path, name: str, range_model: bool = False) -> None:
    """A folder the station accepts (manifest, labels, sha256s); its ONNX bytes are never run here."""
    staging = destination.parent / f".{name}.staging"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(b"stands in for a model: the installer only copies it")
    if range_model:  # as BirdNET's folder has: a location is then a setting the check accepts
        (staging / "range.onnx").write_bytes(b"stands in for BirdNET's range model")
    (staging / "labels.tsv").write_text("label\tscientific_name\tcommon_name\n"
                                        "Great Tinamou\tTinamus major\tGreat Tinamou\n")
    write_folder(staging, destination, Manifest(name=name, sample_rate=16000, window_seconds=3.0,
                                                 input_name="input_values", output_name="logits",
                                                 range_model={"file": "range.onnx", "input": "x", "output": "y"}
                                                 if range_model else {}))


def make_checkout(where: Path) -> Path:
    """The repository's files as a user's checkout, with what the installer must leave behind."""
    where.mkdir(parents=True)
    for part in CHECKOUT_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, where / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, where / part)
    make_model_folder(where / "models" / "birdnet-v2.4", "birdnet-v2.4", range_model=True)
    make_model_folder(where / "models" / "other", "other")
    (where / "models" / "half-built").mkdir()  # no manifest: not a model folder
    for junk in (".git/HEAD", ".venv/pyvenv.cfg", "data/station.db"):
        (where / junk).parent.mkdir(parents=True, exist_ok=True)
        (where / junk).write_text("must not be installed\n")
    return where


def run_installer(checkout: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(["bash", str(checkout / "scripts" / "install.sh"), "--prefix", str(root), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def ids(root: Path, database: str, name: str) -> list[str] | None:
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def kept_rows(root: Path) -> list[tuple]:
    with closing(sqlite3.connect(root / STATE / "station.db")) as db:
        return db.execute("select what from kept").fetchall()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Installed twice into one root; returns (checkout, root, first run, second run)."""
    if os.geteuid() != 0:
        require_or_skip("the installer needs root (chown, useradd --prefix)")
    if not shutil.which("useradd"):
        require_or_skip("useradd not installed (Debian package passwd)")
    base = tmp_path_factory.mktemp("install")
    checkout = make_checkout(base / "checkout")
    root = base / "root"
    first = run_installer(checkout, root)
    assert first.returncode == 0, first.stderr + first.stdout
    (root / CONFIG_DIR / "config.yaml").write_text((root / CONFIG_DIR / "config.yaml").read_text() + "# the user's\n")
    (root / STATE / "models" / "other" / "NOTES").write_text("the user's own\n")
    with closing(sqlite3.connect(root / STATE / "station.db")) as db:  # the user's data, as a station keeps it
        db.execute("create table kept (what text)")
        db.execute("insert into kept values ('a detection')")
        db.commit()
    second = run_installer(checkout, root)
    assert second.returncode == 0, second.stderr + second.stdout
    return checkout, root, first, second


def test_install_lays_out_code_venv_config_state_and_unit(installed):
    checkout, root, first, _ = installed
    lines = first.stdout.splitlines()
    assert all(line.startswith(f"{NAME}: ") for line in lines) and len(lines) >= 10
    assert (root / UNIT).read_text() == (REPO / "systemd" / "field-station.service").read_text()
    assert os.readlink(root / WANTS) == "/" + str(UNIT)
    code = root / CODE
    assert (code / "station" / "cli.py").is_file() and (code / "pyproject.toml").is_file()
    for absent in (".git", "data", "models", "tests", "build"):
        assert not (code / absent).exists(), absent
    assert (code / ".venv" / "pyvenv.cfg").read_text() != (checkout / ".venv" / "pyvenv.cfg").read_text()


def test_the_installed_venv_runs_the_station_without_dev_extras(installed):
    _, root, _, _ = installed
    venv = root / CODE / ".venv" / "bin"
    helped = subprocess.run([str(venv / "station"), "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "run" in helped.stdout and "replay" in helped.stdout
    for extra_only in ("pytest", "torch", "transformers"):
        probe = subprocess.run([str(venv / "python"), "-c", f"import {extra_only}"], capture_output=True)
        assert probe.returncode != 0, f"{extra_only} should not be in the daemon's venv"


def test_user_is_a_system_user_in_the_audio_group(installed):
    _, root, _, _ = installed
    user = ids(root, "passwd", NAME)
    assert user is not None and user[5] == "/var/lib/field-station" and user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000  # a system user
    audio = ids(root, "group", "audio")
    assert audio is not None and NAME in audio[3].split(",")


def test_config_points_at_the_state_dir_and_the_copied_model(installed):
    _, root, _, _ = installed
    uid, gid = int(ids(root, "passwd", NAME)[2]), int(ids(root, "group", NAME)[2])
    config = root / CONFIG_DIR / "config.yaml"
    assert (config.stat().st_mode & 0o777, config.stat().st_uid, config.stat().st_gid) == (0o640, 0, gid)
    settings = load_settings(config)
    assert settings.storage.database == Path("/var/lib/field-station/station.db")
    assert settings.model.path == Path("/var/lib/field-station/models/birdnet-v2.4")
    assert load_folder(root / str(settings.model.path).lstrip("/")).manifest.name == "birdnet-v2.4"
    models = root / STATE / "models"
    assert sorted(p.name for p in models.iterdir()) == ["birdnet-v2.4", "other"]
    copied = [p for p in models.rglob("*") if p.name != "NOTES"]  # NOTES: the fixture's stand-in for a user's file
    for path in [models, *copied]:  # root's, readable by the service's group, never writable by it
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (0, gid) and st.st_mode & 0o027 == 0 and st.st_mode & 0o040, path
    state = (root / STATE).stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
    credentials = (root / CONFIG_DIR / "credentials").stat()
    assert (credentials.st_uid, credentials.st_mode & 0o777) == (0, 0o700)


def test_the_installed_config_passes_the_check_the_unit_runs_before_start(installed):
    _, _, first, second = installed
    for run in (first, second):
        assert "model: /var/lib/field-station/models/birdnet-v2.4" in run.stdout
        assert "config: station config check passes" in run.stdout, run.stdout


def test_a_second_install_keeps_the_users_config_models_and_data(installed):
    _, root, _, second = installed
    assert "config: kept /etc/field-station/config.yaml" in second.stdout
    assert "user field-station: exists, in group audio" in second.stdout
    assert "venv: reusing" in second.stdout
    assert (root / CONFIG_DIR / "config.yaml").read_text().endswith("# the user's\n")
    assert (root / STATE / "models" / "other" / "NOTES").is_file()
    assert kept_rows(root) == [("a detection",)]
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    assert len([line for line in passwd if line.startswith(NAME + ":")]) == 1


def test_the_installer_says_how_to_store_the_mqtt_password(installed):
    _, _, first, _ = installed
    assert "/etc/field-station/credentials/mqtt_password" in first.stdout and "0600" in first.stdout


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if not tool:
        require_or_skip("systemd-analyze not installed (Debian package systemd)")
    return tool


def test_the_installed_unit_verifies_with_its_commands_in_place(installed):
    tool = systemd_analyze()
    _, root, _, _ = installed
    stock = Path("/usr/lib/systemd/system")
    if not (stock / "sysinit.target").is_file():
        require_or_skip(f"{stock} has no stock units to verify against")
    # The root needs the stock targets a service depends on; its ExecStart= paths are the installed ones.
    shutil.copytree(stock, root / "usr/lib/systemd/system", dirs_exist_ok=True, symlinks=True)
    verified = subprocess.run([tool, "verify", f"--root={root}", "field-station.service"],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0 and not verified.stderr.strip() and not verified.stdout.strip(), verified.stderr
    broken = root / CODE / ".venv" / "bin" / "station"
    broken.rename(broken.with_name("station.moved"))
    try:  # the same check fails when the command is missing: it does look inside the root
        missing = subprocess.run([tool, "verify", f"--root={root}", "field-station.service"],
                                 capture_output=True, text=True, timeout=120)
    finally:
        broken.with_name("station.moved").rename(broken)
    assert missing.returncode != 0 and "is not executable" in missing.stderr


def test_the_unit_exposure_is_ok(tmp_path):
    tool = systemd_analyze()
    unit = REPO / "systemd" / "field-station.service"
    report = subprocess.run([tool, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                            timeout=120)
    found = re.search(r"Overall exposure level for field-station\.service: ([0-9.]+)", report.stdout)
    assert found, report.stdout + report.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, report.stdout
    assert "Invalid syntax" not in report.stderr, report.stderr


def test_an_empty_credential_means_the_secret_is_not_set(tmp_path, monkeypatch):
    # The unit's SetCredential= default, used when no file is in /etc/field-station/credentials.
    (tmp_path / "mqtt_password").write_text("\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("STATION_MQTT_PASSWORD", raising=False)
    assert read_secret("mqtt_password") is None
    monkeypatch.setenv("STATION_MQTT_PASSWORD", "from-env")
    assert read_secret("mqtt_password") == "from-env"


@pytest.mark.parametrize("journal, stamped", [("stderr", False), ("elsewhere", True), (None, True)])
def test_log_lines_carry_no_timestamp_when_stderr_is_the_journal(tmp_path, journal, stamped):
    log = tmp_path / "stderr.log"
    code = ("import logging; from station.cli import setup_logging; setup_logging('INFO'); "
            "logging.getLogger('station.test').info('heard a bird')")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with log.open("w") as stderr:
        st = os.fstat(stderr.fileno())
        if journal == "stderr":  # what systemd sets: the device and inode of the stream it connected
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal == "elsewhere":  # inherited by a process whose stderr is not the journal
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
        subprocess.run([sys.executable, "-c", code], stderr=stderr, env=env, cwd=REPO, check=True, timeout=60)
    line = log.read_text().strip()
    assert line.endswith("INFO station.test: heard a bird")
    assert bool(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)) is stamped, line


def test_bad_options_are_one_line_errors(tmp_path):
    for args in (["--purge"], ["--bogus"]):
        done = run_installer(REPO, tmp_path / "root", *args)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (tmp_path / "root").exists()


def test_an_install_with_a_location_sets_it_in_the_kept_config(installed):
    checkout, root, _, _ = installed
    config = root / CONFIG_DIR / "config.yaml"
    for lat, lon in (("42.45", "-76.48"), ("-33", "151.2")):  # a first location, then a move
        done = run_installer(checkout, root, "--lat", lat, "--lon", lon)
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"location: lat {lat}, lon {lon}" in done.stdout
        assert "config: station config check passes" in done.stdout, done.stdout
        where = load_settings(config).location
        assert (where.lat, where.lon) == (float(lat), float(lon))
    text = config.read_text()
    assert text.endswith("# the user's\n") and "# set both lat and lon to turn it on" in text  # only the values changed
    assert config.stat().st_mode & 0o777 == 0o640
    # A kept config without the two lines (here: the location in flow style) is left alone, with a warning.
    shaped_otherwise = re.sub(r"^location:.*?\n(?=\S)", "location: {lat: 1.5, lon: 2.5}\n", text, flags=re.M | re.S)
    config.write_text(shaped_otherwise)
    done = run_installer(checkout, root, "--lat", "10", "--lon", "20")
    assert done.returncode == 0 and "location: NOT set" in done.stdout, done.stderr + done.stdout
    assert config.read_text() == shaped_otherwise and "installed under" in done.stdout


def test_a_bad_location_is_a_one_line_error_before_anything_is_installed(tmp_path):
    for args in (["--lat", "91", "--lon", "0"], ["--lat", "north", "--lon", "0"], ["--lat", "10"],
                 ["--lat=", "--lon=1"], ["--lat", "010", "--lon", "1"],
                 ["--lon", "-181", "--lat", "0"], ["--uninstall", "--lat", "1", "--lon", "1"]):
        done = run_installer(REPO, tmp_path / "root", *args)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
        assert "--lat" in done.stderr or "--lon" in done.stderr
        assert not (tmp_path / "root").exists()


def test_uninstall_keeps_config_and_data_and_purge_removes_them(installed):
    """Runs last: it removes what the tests above inspect."""
    checkout, root, _, _ = installed
    (root / CONFIG_DIR / "credentials" / "mqtt_password").write_text("secret\n")
    for _ in range(2):  # a second uninstall finds nothing left to remove, and says so
        done = run_installer(checkout, root, "--uninstall")
        assert done.returncode == 0, done.stderr
        assert not (root / UNIT).exists() and not (root / WANTS).is_symlink() and not (root / CODE).exists()
        assert (root / CONFIG_DIR / "config.yaml").read_text().endswith("# the user's\n")
        assert (root / CONFIG_DIR / "credentials" / "mqtt_password").is_file()
        assert kept_rows(root) == [("a detection",)] and (root / STATE / "models" / "other").is_dir()
        assert ids(root, "passwd", NAME) is not None
    assert "not there" in done.stdout
    purged = run_installer(checkout, root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / CONFIG_DIR).exists() and not (root / STATE).exists()
    assert ids(root, "passwd", NAME) is None and ids(root, "group", NAME) is None
    assert NAME not in ids(root, "group", "audio")[3].split(",")
