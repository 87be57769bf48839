"""lib.core.stop: a signal asks the run to stop; a second Ctrl-C does not wait."""

import os
import signal

import pytest

from lib.core.stop import GracefulStop


def test_a_signal_asks_to_stop_and_a_second_ctrl_c_interrupts():
    with GracefulStop() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop()
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM still waits for the save
        assert stop()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is not stop._handle  # handlers put back


def test_a_stop_asked_of_a_run_inside_a_caller_stops_the_caller_too():
    with GracefulStop() as caller:
        with GracefulStop() as run:
            os.kill(os.getpid(), signal.SIGTERM)  # too late for the run: its last epoch ends
            assert run()
        assert caller()  # the caller asks before its next run
        with GracefulStop() as next_run:  # one started anyway stops at its first chance
            assert next_run()
    with GracefulStop() as later:  # a stop is not asked of what comes after the caller
        assert not later()


def test_a_request_is_announced_once_on_stderr_however_many_stops_hold_it(capsys):
    with GracefulStop() as caller:
        with GracefulStop():  # a run's
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # the same request, pending
        os.kill(os.getpid(), signal.SIGTERM)  # the caller holds the run's request
        with GracefulStop() as next_run:  # and hands it to a run started anyway
            os.kill(os.getpid(), signal.SIGTERM)
    assert caller() and next_run()
    with GracefulStop():  # a new request, after the caller's ended
        os.kill(os.getpid(), signal.SIGTERM)
    said = capsys.readouterr().err.splitlines()
    assert said == [
        "stop requested (SIGINT): saving and stopping at the next check; press Ctrl-C again "
        "to interrupt at once",
        "stop requested (SIGTERM): saving and stopping at the next check; press Ctrl-C again "
        "to interrupt at once",
    ]


def test_an_interrupting_caller_interrupts_runs_that_never_look_but_waits_for_those_that_do():
    with GracefulStop(interrupt=True) as sweep:
        with pytest.raises(KeyboardInterrupt):  # a run with no stop of its own: at once
            os.kill(os.getpid(), signal.SIGTERM)
        assert not sweep()
        with GracefulStop() as run:  # a run that looks: it saves and stops, and says so
            os.kill(os.getpid(), signal.SIGINT)
            assert run()
        assert sweep()  # handed on: the sweep stops before its next run


def test_a_run_stopped_inside_a_caller_leaves_the_resume_line_to_it():
    """A run's stop nested in a caller's says nothing of how to resume: the caller's line
    names the command to run again (the study's, not the workdir of one of its runs)."""
    from experiments import common

    said = []
    with GracefulStop() as caller:
        with GracefulStop() as run:
            os.kill(os.getpid(), signal.SIGTERM)
        common.say_stopped(lambda line, **_: said.append(line), {"workdir": "runs/one"}, run)
    common.say_stopped(lambda line, **_: said.append(line), {"workdir": "runs/study"}, caller)
    assert run.nested and not caller.nested and caller()
    assert said == ["stopped; run again with --workdir=runs/study to resume"]
