import argparse

import pytest

from conftest import station_cli
from station.cli import build_parser, main


def all_commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from all_commands(sub, (*prefix, name))


COMMANDS = list(all_commands(build_parser()))


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


def test_a_group_without_a_subcommand_prints_its_help_and_fails(capsys):
    assert main(["model"]) == 2
    assert "export" in capsys.readouterr().out


def test_detections_without_a_database_is_a_clear_error(tmp_path):
    result = station_cli("detections", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert result.returncode == 1 and "no database yet" in result.stderr and "Traceback" not in result.stderr


def test_the_systemd_unit_runs_commands_the_cli_accepts():
    from conftest import REPO

    unit = (REPO / "systemd" / "field-station.service").read_text()
    commands = [line.split("=", 1)[1].split()[1:] for line in unit.splitlines()
                if line.startswith(("ExecStart=", "ExecStartPre="))]
    assert len(commands) == 2
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.handler is not None and str(args.config) == "/etc/field-station/config.yaml"
