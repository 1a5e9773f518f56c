"""What C libraries write to file descriptor 2 becomes log lines; Python's own output is untouched.

Each test runs a small script in a subprocess, since the capture takes over the process's fd 2.
"""
import subprocess
import sys
import textwrap

import numpy as np

from conftest import REPO
from station import chatter

PRELUDE = """
import logging, os, sys, threading, time
from station import chatter
logging.basicConfig(level="INFO", format="LOG %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("script")
"""


def run_script(body: str, *args: str) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def lines(result) -> list[str]:
    return result.stderr.splitlines()


def test_what_is_written_while_a_file_is_read_becomes_one_line_for_it():
    result = run_script("""
        with chatter.captured():
            log.info("before")
            with chatter.about("XC1.mp3"):
                os.write(2, b"Note: Illegal Audio-MPEG-Header 0x0 at offset 12.\\n")
                os.write(2, b"Note: Trying to resync...\\npartial line without newline")
            with chatter.about("XC2.mp3"):
                pass
            log.info("after")
    """)
    assert result.returncode == 0, result.stderr
    assert lines(result) == [
        "LOG INFO script: before",
        "LOG WARNING station.chatter: XC1.mp3: native libraries said 3 line(s), "
        "first: Note: Illegal Audio-MPEG-Header 0x0 at offset 12.",
        "LOG INFO script: after",
    ]


def test_a_failing_file_takes_what_was_said_into_its_own_line():
    result = run_script("""
        with chatter.captured():
            with chatter.about("bad.mp3") as heard:
                os.write(2, b"dequantization failed!\\n")
                log.error("skipped: bad.mp3: corrupt (%s)", heard.take())
    """)
    assert lines(result) == ["LOG ERROR script: skipped: bad.mp3: corrupt (native libraries said 1 line(s), "
                             "first: dequantization failed!)"]


def test_real_libsndfile_chatter_about_a_garbage_mp3(tmp_path):
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + np.random.default_rng(3).integers(
        0, 256, 6000, dtype=np.uint8).tobytes())
    result = run_script("""
        from station.sources import FileSource
        with chatter.captured():
            list(FileSource(sys.argv[1]).chunks(threading.Event()))
    """, str(garbage))
    (line,) = lines(result)
    assert line.startswith(f"LOG ERROR station.sources: skipped: {garbage}: not a readable audio file")
    assert "native libraries said" in line


def test_chatter_outside_files_is_logged_once_per_message_per_minute():
    result = run_script("""
        with chatter.captured():
            for card in range(50):
                os.write(2, b"ALSA lib confmisc.c:767:(parse_card) cannot find card '%d'\\n" % card)
            os.write(2, b"AlsaOpen: snd_pcm_open failed\\n")
    """)
    assert lines(result) == [
        "LOG WARNING station.chatter: native library said: ALSA lib confmisc.c:767:(parse_card) cannot find card '0'",
        "LOG WARNING station.chatter: native library said: AlsaOpen: snd_pcm_open failed",
    ]


def test_child_processes_writing_to_the_inherited_stderr_are_logged_too():
    result = run_script("""
        import subprocess
        with chatter.captured():
            subprocess.run(["sh", "-c", "echo from a child >&2"])
    """)
    assert lines(result) == ["LOG WARNING station.chatter: native library said: from a child"]


def test_handlers_made_before_the_capture_do_not_feed_it():
    result = run_script("""
        with chatter.captured():
            log.warning("said once")
            print("print to stderr", file=sys.stderr)
    """)
    assert lines(result) == ["LOG WARNING script: said once", "print to stderr"]


def test_a_crash_traceback_reaches_the_original_stderr_and_fd_2_is_restored():
    result = run_script("""
        original = sys.stderr
        try:
            with chatter.captured():
                raise RuntimeError("the daemon crashed")
        finally:
            assert sys.stderr is original
            os.write(2, b"raw after the capture\\n")
    """)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: the daemon crashed" in result.stderr
    assert "raw after the capture" in lines(result)


def test_a_failing_reader_says_so_once_and_passes_the_bytes_through():
    result = run_script("""
        def broken(self, buffer):
            raise ValueError("reader bug")
        chatter.StderrCapture._consume = broken
        with chatter.captured():
            os.write(2, b"first raw line\\n")
            time.sleep(0.5)
            with chatter.about("x.mp3") as heard:  # must not wait for a reader that gave up
                os.write(2, b"second raw line\\n")
            time.sleep(0.5)
    """)
    assert result.returncode == 0, result.stderr
    failures = [line for line in lines(result) if "stderr capture failed (ValueError: reader bug)" in line]
    assert len(failures) == 1
    assert "first raw line" in lines(result) and "second raw line" in lines(result)
    assert "station-chatter" not in result.stderr


def test_a_flood_does_not_block_the_writer():
    result = run_script("""
        with chatter.captured():
            with chatter.about("loud.mp3"):
                for i in range(20000):
                    os.write(2, b"x" * 100 + b"\\n")
    """)
    assert result.returncode == 0
    assert lines(result) == ["LOG WARNING station.chatter: loud.mp3: native libraries said 20000 line(s), "
                             "first: " + "x" * 100]


def test_without_a_capture_about_is_silent():
    with chatter.about("x.mp3") as heard:
        pass
    assert heard.take() == ""
