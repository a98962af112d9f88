"""Writing YAML run configs for the tests: a base config plus ``section__field=value`` changes."""

from pathlib import Path

import yaml


def write_config(folder: Path, name: str, config: dict, **changes) -> Path:
    """Write ``config`` to ``folder/name.yaml`` after applying ``changes``.

    A change ``ccc__max_distance=0.4`` sets ``config["ccc"]["max_distance"]``; a value of
    None removes the key.
    """
    for key, value in changes.items():
        section, field = key.split("__")
        if value is None:
            config[section].pop(field)
        else:
            config[section][field] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
