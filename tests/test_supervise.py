"""Background loops are restarted when they fail, and a loop that cannot be kept alive stops the station."""
import logging
import threading

from helpers import wait_for
from station.supervise import Supervisor


def test_a_failing_loop_is_logged_once_and_restarted(caplog):
    caplog.set_level(logging.ERROR, logger="station.supervise")
    stop_process = threading.Event()
    supervisor = Supervisor(stop_process, max_failures=5, first_backoff=0.01, max_backoff=0.02)
    runs = []

    def loop(stop):
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError("broker exploded")
        stop.wait()

    supervisor.start("flaky", loop)
    assert wait_for(lambda: len(runs) == 3, 10, 0.01)
    supervisor.stop()
    assert supervisor.restarts["flaky"] == 2 and supervisor.gave_up is None and not stop_process.is_set()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, "the traceback is logged the first time only"
    assert sum("flaky thread failed" in r.getMessage() for r in caplog.records) == 2


def test_a_loop_that_returns_early_counts_as_a_failure():
    supervisor = Supervisor(threading.Event(), first_backoff=0.01)
    runs = []

    def loop(stop):
        runs.append(1)
        if len(runs) > 1:
            stop.wait()

    supervisor.start("quitter", loop)
    assert wait_for(lambda: len(runs) == 2, 10, 0.01)
    supervisor.stop()
    assert supervisor.restarts["quitter"] == 1


def test_a_loop_that_keeps_failing_stops_the_process_with_a_reason():
    stop_process = threading.Event()
    supervisor = Supervisor(stop_process, max_failures=3, window_seconds=60, first_backoff=0.01, max_backoff=0.01)

    def loop(stop):
        raise OSError("disk on fire")

    supervisor.start("doomed", loop)
    assert stop_process.wait(10)
    assert "doomed thread failed 3 times" in supervisor.gave_up and "OSError: disk on fire" in supervisor.gave_up
    supervisor.stop()


def test_stop_ends_every_loop():
    supervisor = Supervisor(threading.Event())
    ended = []
    for name in ("a", "b"):
        supervisor.start(name, lambda stop, name=name: (stop.wait(), ended.append(name)))
    supervisor.stop(timeout=5)
    assert sorted(ended) == ["a", "b"]
