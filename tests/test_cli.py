"""The command line as a user meets it: help, one-line errors, output that pipes, alerts."""
import argparse
import json
import re
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest

from conftest import REPO, T0, station_cli
from helpers import database_at_schema, rows, sealed_model_folder
from station.alerts import AlertEngine, AlertWriter
from station.cli import build_parser, main, settings_for
from station.config import AlertSettings
from station.config_check import ALERT_TYPES
from station.store import MIGRATIONS, Store
from station.types import Detection, Species

OWL = Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl")


def all_commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from all_commands(sub, (*prefix, name))


def subparser(command):
    parser = build_parser()
    for name in command:
        (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = group.choices[name]
    return parser


COMMANDS = list(all_commands(build_parser()))
LEAVES = [c for c in COMMANDS if not any(other[:len(c)] == c and other != c for other in COMMANDS)]
GROUPS = [c for c in COMMANDS if c not in LEAVES]
# Commands a user runs: the leaves, and groups that do something of their own (`station clips` lists clips).
RUNNABLE = [c for c in COMMANDS if c in LEAVES
            or getattr(subparser(c).get_default("handler"), "__name__", "").startswith("cmd_")]


def test_the_commands_the_issue_names_exist():
    assert {("run",), ("replay",), ("model", "export"), ("model", "info"), ("config", "check"),
            ("detections",)} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: station " + " ".join(command)) and len(out.splitlines()) > 3


@pytest.mark.parametrize("command", RUNNABLE, ids=" ".join)
def test_every_option_and_argument_has_help(command):
    missing = [action.dest for action in subparser(command)._actions
               if not action.help and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))]
    assert not missing, f"station {' '.join(command)}: no help for {missing}"


@pytest.mark.parametrize("group", GROUPS, ids=" ".join)
def test_a_group_lists_every_subcommand_with_its_one_line_help(group, capsys):
    with pytest.raises(SystemExit):
        main([*group, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for command in [c for c in COMMANDS if len(c) == len(group) + 1 and c[:len(group)] == group]:
        description = " ".join(subparser(command).description.split())
        assert f"{command[-1]} {description}" in out, command


def test_a_group_without_a_subcommand_prints_its_help_and_fails(capsys):
    assert main(["model"]) == 2
    assert "export" in capsys.readouterr().out


def readme_commands() -> set[tuple[str, ...]]:
    """The first column of the README's command table, without arguments and options."""
    text = (REPO / "README.md").read_text()
    table = text.split("## Commands", 1)[1].split("\n\n", 2)[1]
    found = set()
    for line in table.splitlines():
        match = re.match(r"\| `station ([^`]*)`", line)
        if match:
            words = match.group(1).split()
            found.add(tuple(w for w in words[:next((i for i, w in enumerate(words)
                                                   if not re.fullmatch(r"[a-z][a-z0-9-]*", w)), len(words))]))
    return found


def test_the_readme_command_table_lists_exactly_the_cli_commands():
    assert readme_commands() == set(RUNNABLE)


def test_the_commands_without_config_are_the_ones_the_readme_names():
    without = {c for c in LEAVES if not any("--config" in a.option_strings for a in subparser(c)._actions)}
    assert without == {("model", "export"), ("model", "convert-birdnet"), ("xc", "calibrate")}
    text = " ".join((REPO / "README.md").read_text().split())
    claim = text.split("Commands that read the configuration take `--config FILE`", 1)
    assert len(claim) == 2, "the README says which commands take --config"
    sentence = claim[1].split(". ", 1)[0]
    for command in without:
        assert f"`{' '.join(command)}`" in sentence, command


def test_detections_without_a_database_is_a_clear_error(tmp_path):
    result = station_cli("detections", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert result.returncode == 1 and "no database yet" in result.stderr and "Traceback" not in result.stderr


def test_the_systemd_unit_runs_commands_the_cli_accepts():
    unit = (REPO / "systemd" / "field-station.service").read_text()
    commands = [line.split("=", 1)[1].split()[1:] for line in unit.splitlines()
                if line.startswith(("ExecStart=", "ExecStartPre="))]
    assert len(commands) == 2
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.handler is not None and str(args.config) == "/etc/field-station/config.yaml"


@pytest.mark.parametrize("argv, message", [
    (["model", "species", "--lat", "18", "--lon", "-66", "--week", "60"], "--week: must be between 1 and 48 or -1"),
    (["model", "species", "--lat", "118.2", "--lon", "-66"], "--lat: must be between -90 and 90, not 118.2"),
    (["model", "species", "--lat", "18", "--lon", "-190"], "--lon: must be between -180 and 180"),
    (["model", "species", "--lat", "18", "--lon", "-66", "--threshold", "1.5"], "--threshold: must be between 0 and 1"),
    (["model", "species", "--lat", "north", "--lon", "-66"], "--lat: 'north' is not a number"),
    (["run", "--lat", "95", "--lon", "0"], "--lat: must be between -90 and 90, not 95"),
    (["replay", "x.wav", "--week", "0"], "--week: must be between 1 and 48 or -1, not 0"),
    (["alerts", "--type", "BOGUS"], "unknown alert type 'BOGUS' (known: RARE_SPECIES, NEW_SPECIES"),
    (["alerts", "--limit", "0"], "--limit: must be between 1 and"),
    (["xc", "calibrate", "s.npz", "--precision", "0"], "--precision: must be between 0.01 and 1"),
])
def test_bad_options_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_the_location_on_the_command_line_overrides_the_config_and_a_zero_counts(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("location:\n  lat: 18.2\n  lon: -66.5\n  week: 10\n")
    args = build_parser().parse_args(["replay", "x.wav", "--config", str(config), "--model", str(tmp_path / "none"),
                                      "--lat", "0", "--lon", "-0.5", "--week", "-1"])
    where = settings_for(args).location
    assert (where.lat, where.lon, where.week) == (0.0, -0.5, -1)


def test_half_a_location_on_the_command_line_names_the_flag(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("station:\n  id: a\n")
    code = main(["replay", "x.wav", "--config", str(config), "--lat", "12", "--model", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"station: error: {config}: location.lat (--lat): set location.lon too, or neither\n"


def test_a_week_without_a_location_is_refused_not_ignored(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("station:\n  id: a\n")
    code = main(["replay", "x.wav", "--config", str(config), "--week", "20", "--model", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and err == "station: error: --week needs a location: give --lat and --lon, or set " \
                                "location.lat and location.lon\n"


def test_model_species_lat_lon_are_its_own_not_the_configs_location(tmp_path):
    """A model without a range model is a model error for `model species`, not advice to unset the config's."""
    model = sealed_model_folder(tmp_path)
    result = station_cli("model", "species", "--lat", "18", "--lon", "-66", "--model", str(model), cwd=tmp_path)
    assert result.returncode == 3 and "has no range model" in result.stderr and "--lat" not in result.stderr


def test_week_minus_one_and_the_range_edges_are_accepted():
    args = build_parser().parse_args(["model", "species", "--lat", "-90", "--lon", "180", "--week", "-1",
                                      "--threshold", "0"])
    assert (args.lat, args.lon, args.week, args.threshold) == (-90, 180, -1, 0)


def test_config_check_takes_its_file_either_way_but_not_two(tmp_path):
    model = sealed_model_folder(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("station:\n  id: a\n")
    other = tmp_path / "d.yaml"
    other.write_text("station:\n  id: b\n")
    for argv in (["config", "check", str(config)], ["config", "check", "--config", str(config)],
                 ["config", "check", str(config), "--config", str(config)]):
        result = station_cli(*argv, "--db", str(tmp_path / "st.db"), "--model", str(model), cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.strip() == f"{config}: ok", (argv, result.stderr)
    both = station_cli("config", "check", str(config), "--config", str(other), cwd=tmp_path)
    assert both.returncode == 2 and both.stderr.count("\n") == 1 and "two config files" in both.stderr


def detection(n: int, at, confidence=0.8) -> Detection:
    return Detection(f"d{n}", "st", "garden.wav", "m", OWL, confidence, confidence, 2, at,
                     at + timedelta(seconds=4.5), 0.0, 4.5, status="closed")


@pytest.fixture
def alert_db(tmp_path):
    """A database with 40 RARE_SPECIES and NEW_SPECIES alerts and one DISK_LOW."""
    path = tmp_path / "st.db"
    store = Store.open(path)
    engine = AlertEngine(AlertSettings(rare_species=["Tawny Owl"], cooldown_minutes=0), "st", None)
    with store.transaction():
        for n in range(20):
            det = detection(n, T0 + timedelta(days=n), confidence=0.5 + n / 100)
            engine.on_batch(store.db, [], store.save([det], None))
        AlertWriter("st", AlertSettings(), None).raise_alert(store.db, "DISK_LOW", T0, details={"free_mb": 3})
    store.close()
    return path


def test_alerts_as_json_have_detection_ids_as_a_list_and_a_score_and_source(alert_db, tmp_path):
    result = station_cli("alerts", "--json", "--db", str(alert_db), "--limit", "100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(alerts) == 41
    rare = [a for a in alerts if a["type"] == "RARE_SPECIES"]
    assert rare[0]["detection_ids"] == ["d19"] and rare[0]["score"] == 0.69 and rare[0]["source"] == "garden.wav"
    (disk,) = [a for a in alerts if a["type"] == "DISK_LOW"]
    assert disk["detection_ids"] == [] and disk["score"] is None and disk["source"] is None


def test_alerts_type_is_case_insensitive_and_the_table_shows_score_and_source(alert_db, tmp_path):
    result = station_cli("alerts", "--type", "new_species", "--db", str(alert_db), "--limit", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, _, *lines = result.stdout.splitlines()
    assert header.split() == ["event_time", "type", "common_name", "scientific_name", "score", "source",
                              "detection_ids", "created"]
    assert len(lines) == 3 and all(" NEW_SPECIES " in line for line in lines)
    assert "Tawny Owl" in lines[0] and "0.690  garden.wav  d19" in lines[0]  # the newest first
    disk = station_cli("alerts", "--type", "Disk_Low", "--db", str(alert_db), cwd=tmp_path)
    assert disk.returncode == 0 and len(disk.stdout.splitlines()) == 3 and "DISK_LOW" in disk.stdout
    none = station_cli("alerts", "--type", "no_audio", "--db", str(alert_db), cwd=tmp_path)
    assert none.returncode == 0 and none.stdout == "nothing yet\n"


@pytest.mark.parametrize("command", [["alerts", "--json"], ["detections", "--json"], ["alerts"]])
def test_a_reader_that_goes_away_ends_the_command_quietly_with_141(command, alert_db, tmp_path):
    with sqlite3.connect(alert_db) as conn:  # detections: the 20 owls are there already
        assert conn.execute("SELECT count(*) FROM detections").fetchone()[0] == 20
    proc = subprocess.Popen([sys.executable, "-m", "station.cli", *command, "--db", str(alert_db), "--limit", "100"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head -0`: nobody reads what the command prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


def test_output_that_is_read_to_the_end_exits_0(alert_db, tmp_path):
    result = subprocess.run(f"{sys.executable} -m station.cli alerts --json --db {alert_db} | head -3",
                            shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            executable="/bin/bash")
    assert len(result.stdout.splitlines()) == 3 and "Traceback" not in result.stderr, result.stderr


def test_an_alerts_table_of_an_older_database_gains_score_and_source(tmp_path):
    """Migration 4 on a database of schema 3 with alerts: the columns are filled from payload and detections."""
    path = tmp_path / "old.db"
    db = database_at_schema(path, 3)
    db["detections"].insert({"id": "d1", "station": "st", "source": "old.wav", "model": "m", "label": "x",
                             "confidence": 0.7, "start_time": "t", "end_time": "t", "status": "closed"})
    old = {"station": "st", "payload": "", "event_time": "2026-05-01T06:00:00.000Z", "created": "c"}
    db["alerts"].insert_all([
        {**old, "id": "a1", "type": "NEW_SPECIES", "detection_ids": '["d1"]',
         "payload": json.dumps({"details": {"confidence": 0.7}})},
        {**old, "id": "a2", "type": "UNKNOWN_SOUND", "detection_ids": "[]",
         "payload": json.dumps({"details": {"best": {"label": "x", "score": 0.12}, "source": "mic"}})},
        {**old, "id": "a3", "type": "DISK_LOW", "detection_ids": "[]", "payload": json.dumps({"details": {}})}])
    db.conn.close()
    store = Store.open(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    store.close()
    found = {r["id"]: (r["score"], r["source"]) for r in rows(path, "SELECT id, score, source FROM alerts")}
    assert found == {"a1": (0.7, "old.wav"), "a2": (0.12, "mic"), "a3": (None, None)}


def test_alert_types_are_the_schemas():
    schema = json.loads((REPO / "station" / "schemas" / "alert.schema.json").read_text())
    assert list(ALERT_TYPES) == schema["properties"]["type"]["enum"]
