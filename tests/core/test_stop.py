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
