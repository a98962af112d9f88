"""Test-only fault injection: SIGKILL a ``cccdask run`` process at a chosen stage.

tests/test_reliability.py puts this folder first on the PYTHONPATH of a ``cccdask run``
subprocess (:func:`kill_points.kill_environment`) and names the stage in
``$CCCDASK_TEST_KILL_AT``; Python imports this module at start-up, which wraps the
driver's bookkeeping so the process kills itself with SIGKILL at that stage:

first_frame
    A task's large outputs are written, its small results not yet, its frames not
    recorded (the first :meth:`cccdask.pipeline.record.Completion.add`).
midway
    Half the frames recorded (after the ``Completion.add`` that reaches half).
block_write
    In the middle of the driver's first write of small-result blocks: one variable's
    block written, the next not, the completion record not yet
    (:meth:`cccdask.pipeline.blocks.BlockWriter._write_block`).
finalise
    Reports written, the store not yet marked complete (the
    :func:`cccdask.io.store.update_store_attrs` call that sets the complete status).

``$CCCDASK_TEST_PAUSE_AT`` names a stage (``midway``) at which the process instead
writes its PID to ``$CCCDASK_TEST_PAUSE_FILE`` and waits (once, up to 120 s) for the test
to signal it: tests/test_interrupt.py sends Ctrl-C (SIGINT) and starts a second writer at
a known moment.

Production code carries no hook: without the variables nothing is wrapped.
"""

import os
import signal
import time
from pathlib import Path

STAGE = os.environ.get("CCCDASK_TEST_KILL_AT")
PAUSE_STAGE = os.environ.get("CCCDASK_TEST_PAUSE_AT")
_PAUSED = []


def _pause() -> None:
    """Once: say so in the pause file, then wait for the test's signal (a KeyboardInterrupt here)."""
    if _PAUSED:
        return
    _PAUSED.append(True)
    Path(os.environ["CCCDASK_TEST_PAUSE_FILE"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(stage: str) -> None:
    from cccdask.io import store
    from cccdask.pipeline import blocks, record

    add = record.Completion.add
    update_store_attrs = store.update_store_attrs
    write_block = blocks.BlockWriter._write_block
    written = []

    def add_then_maybe_kill(self, outcomes, *results):
        if stage == "first_frame":
            _kill()  # its frames are written, not yet recorded
        add(self, outcomes, *results)
        if self.record.complete.sum() >= len(self.record.status) // 2:
            if stage == "midway":
                _kill()
            if stage == "pause_midway":
                _pause()

    def update_or_kill(path, **attrs):
        if stage == "finalise" and attrs.get("cccdask_status") == store.STATUS_COMPLETE:
            _kill()  # reports written, the store not yet marked complete
        update_store_attrs(path, **attrs)

    def write_block_or_kill(self, name, start, values):
        if stage == "block_write" and written:
            _kill()  # one variable's block written, the others and the record not
        write_block(self, name, start, values)
        written.append(name)

    record.Completion.add = add_then_maybe_kill
    blocks.BlockWriter._write_block = write_block_or_kill
    store.update_store_attrs = update_or_kill


if STAGE:
    _install(STAGE)
elif PAUSE_STAGE == "midway":
    _install("pause_midway")
