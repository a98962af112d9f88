"""The environment that makes a ``cccdask run`` subprocess kill itself (or pause) at a stage (see kill_hook/)."""

import os
from pathlib import Path

TEST_KILL_ENV = "CCCDASK_TEST_KILL_AT"
KILL_HOOK_DIR = Path(__file__).parent / "kill_hook"


def kill_environment(stage: str) -> dict[str, str]:
    """``os.environ`` plus the kill stage, with the hook's ``sitecustomize`` first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(KILL_HOOK_DIR), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, TEST_KILL_ENV: stage, "PYTHONPATH": path}


TEST_PAUSE_ENV = "CCCDASK_TEST_PAUSE_AT"
TEST_PAUSE_FILE_ENV = "CCCDASK_TEST_PAUSE_FILE"


def pause_environment(stage: str, pause_file: Path) -> dict[str, str]:
    """``os.environ`` plus a pause at ``stage`` (the run writes its PID to ``pause_file`` and waits)."""
    path = os.pathsep.join(p for p in (str(KILL_HOOK_DIR), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, TEST_PAUSE_ENV: stage, TEST_PAUSE_FILE_ENV: str(pause_file), "PYTHONPATH": path}
