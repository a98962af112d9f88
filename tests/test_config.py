"""The YAML config: validation naming key paths, path resolution, the JSON Schema, configs/."""

import json
from pathlib import Path

import pytest
import yaml

from cccdask.cli import demo_config
from cccdask.config import ConfigError, PipelineConfig, config_from_dict, json_schema, load_config
from cccdask.io.store import identity_hash

CONFIGS = Path(__file__).parents[1] / "configs"
MINIMAL = {"input": {"image1": "a.tif", "image2": "b.tif"}, "output": {"store": "out.zarr"}}


def _with(**sections):
    data = json.loads(json.dumps(MINIMAL))
    for path, value in sections.items():
        keys = path.split("__")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"input__image1": {"path": "a.tif", "colour": 1}}, "input.image1.colour: Extra inputs are not permitted"),
        ({"input__image2": {"path": "b.tif", "channel": -1}}, "input.image2.channel: Input should be greater than or equal to 0"),
        ({"ccc__mode": "fast"}, "ccc.mode: Input should be 'full', 'no_confidence' or 'correlation'"),
        ({"ccc__max_distance": 0}, "ccc.max_distance: Input should be greater than 0"),
        ({"ccc__contributions": True, "ccc__mode": "correlation"}, "contributions need a Gaussian fit"),
        ({"input__spacing": [0.1, -0.2]}, "spacing must be positive"),
        ({"cluster__kind": "address"}, "cluster.kind is 'address' but cluster.address is not set"),
        ({"cluster__local__threads_per_worker": "two"}, "cluster.local.threads_per_worker: Input should be a valid integer"),
        ({"execution__memory_target": 1.5}, "execution.memory_target: Input should be less than or equal to 1"),
        ({"coefficients__threshold_range": -1.0}, "coefficients.threshold_range: threshold_range must be >= 0"),
        ({"preprocess__background__image1__method": "constant"}, "preprocess.background.image1"),
    ],
)
def test_invalid_values_name_their_key_path(changes, message):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(_with(**changes), source="run.yaml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("run.yaml: ")


def test_missing_sections_are_named():
    with pytest.raises(ConfigError, match=r"run.yaml: output: Field required"):
        config_from_dict({"input": MINIMAL["input"]}, source="run.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_dict(["input"], source="run.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(_with(input__mask="masks/m.tif", cluster__kind="scheduler_file",
                                         cluster__scheduler_file="sched.json")))
    config = load_config(path)
    assert config.input.image1.path == folder / "a.tif"
    assert config.input.mask.path == folder / "masks" / "m.tif"
    assert config.output.store == folder / "out.zarr"
    assert config.cluster.scheduler_file == folder / "sched.json"
    absolute = load_config(path).model_copy()
    assert absolute.input.image2.path.is_absolute()


def test_invalid_yaml_gives_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input:\n  image1: a.tif\n  image2: [b.tif\noutput: {store: x}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_config(path)


def test_identity_ignores_how_the_work_runs():
    base = config_from_dict(MINIMAL, base_dir="/data")
    other_cluster = config_from_dict(_with(cluster__kind="address", cluster__address="tcp://h:8786",
                                           execution__retries=5, output__overwrite=True), base_dir="/data")
    other_analysis = config_from_dict(_with(ccc__max_distance=2.0), base_dir="/data")
    assert identity_hash(base.analysis_identity()) == identity_hash(other_cluster.analysis_identity())
    assert identity_hash(base.analysis_identity()) != identity_hash(other_analysis.analysis_identity())


def test_dask_settings_from_execution():
    config = config_from_dict(_with(execution__memory_target=0.6, execution__memory_pause=0.85,
                                    execution__dask_config={"distributed.scheduler.allowed-failures": 7}))
    assert config.execution.dask_settings() == {
        "distributed.worker.memory.target": 0.6,
        "distributed.worker.memory.pause": 0.85,
        "distributed.scheduler.allowed-failures": 7,
    }


def test_json_schema_describes_the_models():
    schema = json_schema()
    json.dumps(schema)  # plain JSON
    assert set(schema["required"]) == {"input", "output"}
    assert schema["additionalProperties"] is False
    sections = set(schema["properties"])
    assert {"input", "ccc", "coefficients", "output", "cluster", "execution", "preprocess"} <= sections
    assert sections == set(PipelineConfig.model_fields)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    config = load_config(path)
    assert config.output.store.is_absolute()


def test_demo_config_file_is_what_demo_writes():
    assert yaml.safe_load((CONFIGS / "demo.yaml").read_text()) == demo_config()
    assert load_config(CONFIGS / "slurm-example.yaml").cluster.slurm.jobs == 10
