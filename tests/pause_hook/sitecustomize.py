"""Test-only: hold a ``cccdask run`` process still in the middle of its run.

tests/test_progress.py puts this folder first on the PYTHONPATH of a ``cccdask run``
subprocess with ``$CCCDASK_TEST_PAUSE_AFTER`` (a number of frames) and
``$CCCDASK_TEST_RESUME_FILE`` (a path). Once that many frames are recorded (and their
progress reported), the driver waits before recording more until the file exists, so
the test reads the run's output while it is certainly still running, then lets it
finish. Production code carries no hook: without the variables nothing is wrapped.
"""

import os
import time

PAUSE_AFTER = os.environ.get("CCCDASK_TEST_PAUSE_AFTER")
RESUME_FILE = os.environ.get("CCCDASK_TEST_RESUME_FILE")


def _install(after: int, resume_file: str) -> None:
    from cccdask.pipeline import record

    add = record.Completion.add

    def add_after_pause(self, outcomes, *results):
        # the frames recorded so far have been reported by the driver's progress call
        if int(self.record.complete.sum()) >= after:
            deadline = time.monotonic() + 300
            while not os.path.exists(resume_file) and time.monotonic() < deadline:
                time.sleep(0.05)
        add(self, outcomes, *results)

    record.Completion.add = add_after_pause


if PAUSE_AFTER and RESUME_FILE:
    _install(int(PAUSE_AFTER), RESUME_FILE)
