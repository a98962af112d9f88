"""Building blocks shared by the config models of :mod:`cccdask.config` and :mod:`cccdask.preprocess`.

Both modules import this one and neither imports the other's internals, so there is no
import cycle: :mod:`cccdask.config` imports :mod:`cccdask.preprocess` for its optional
``preprocess`` section, and :mod:`cccdask.preprocess` needs only these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo


class Section(BaseModel):
    """A config section: unknown keys are rejected, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(value: Any, info: ValidationInfo) -> Any:
    """Make a relative path absolute against the config file's folder (when known)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.absolute() if not path.is_absolute() else path
