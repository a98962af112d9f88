"""The YAML run configuration: pydantic models, loading, and the JSON Schema.

A run is described by one YAML file (see ``configs/``). It is validated completely
before anything runs: unknown keys and wrong types are rejected with the key's path
(``input.image1.channel: ...``). Relative paths are resolved against the folder of the
YAML file, so a config and its data can move together.

Sections
--------
input
    Where the two channels and the optional mask come from (files, channels).
ccc
    The CCC analysis: mode, maximum distance, contribution and intermediate images.
coefficients
    Optional: the classic colocalization coefficients, per frame, in the same task.
preprocess
    Optional: per-frame preparation (background, generated masks, chromatic shift),
    present when :mod:`cccdask.preprocess` is installed.
output
    The results store and the report files beside it.
cluster
    Where the work runs: an embedded LocalCluster (default), an existing scheduler,
    or SLURM through dask-jobqueue.
execution
    Frames per task, retries, worker memory thresholds, other Dask settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cccdask.config_fields import Section, resolve_path

try:  # the preprocessing section exists only when its module is installed
    from cccdask.preprocess import Preprocessing
except ModuleNotFoundError as error:  # pragma: no cover - depends on the install
    if error.name not in ("cccdask.preprocess",):
        raise
    Preprocessing = None


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file and the key path."""


NO_MASK_WORDS = ("none", "null", "~", "")


class ImageSource(Section):
    """One image: a file (or a Zarr group/array) and optionally one of its channels.

    A bare string is accepted as ``{path: ...}``.
    """

    path: Path = Field(description="File or folder: .zarr, .ome.zarr, .tif/.tiff, .npy.")
    channel: Optional[int] = Field(
        None, ge=0, description="Channel index (0-based) for a multi-channel file."
    )
    component: Optional[str] = Field(
        None, description="Array path inside a Zarr group (default: the first image)."
    )
    dims: Optional[str] = Field(
        None,
        pattern=r"^[tczyx]{2,5}$",
        description="Axis names for files without metadata, e.g. 'tyx' for a .npy stack.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, (str, Path)):
            return {"path": value}
        return value

    _abs_path = field_validator("path", mode="after")(resolve_path)


class InputConfig(Section):
    """The two channels and the mask."""

    image1: ImageSource = Field(description="Channel 1 (the channel whose mean is subtracted).")
    image2: ImageSource = Field(description="Channel 2.")
    mask: Optional[ImageSource] = Field(
        None,
        description="Analysis mask (non-zero = inside): one frame for all frames, or one per "
        "frame. null or none (or the key left out): every voxel is inside.",
    )
    spacing: Optional[Union[float, list[float]]] = Field(
        None,
        description="Voxel size per spatial axis in (z,) y, x order, overriding the files' "
        "metadata. Default: from the metadata.",
    )
    units: Optional[str] = Field(None, description="Unit of the spacing, e.g. 'um'.")

    @field_validator("mask", mode="before")
    @classmethod
    def _none_is_no_mask(cls, value):
        """``mask: none`` (any case) means no mask, as ``mask: null`` does, not a file named "none"."""
        if isinstance(value, str) and value.strip().lower() in NO_MASK_WORDS:
            return None
        return value

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value):
        values = [value] if isinstance(value, (int, float)) else value
        if values is not None:
            if not values or not all(v > 0 and v == v and v != float("inf") for v in values):
                raise ValueError(
                    "spacing must be positive and finite on every axis, e.g. [0.2, 0.065, 0.065]"
                )
        return value


class CCCConfig(Section):
    """Colocalization by Cross Correlation."""

    mode: Literal["full", "no_confidence", "correlation"] = Field(
        "full",
        description="'full' (fit and confidence), 'no_confidence' (less memory), "
        "'correlation' (profiles only, no fit).",
    )
    max_distance: Optional[float] = Field(
        None, gt=0, description="Largest distance profiled (physical units); None: out to the corner."
    )
    contributions: bool = Field(False, description="Store the contribution images.")
    intermediates: bool = Field(False, description="Store the correlograms O, S and G.")
    fiji_compat: bool = Field(False, description="Reproduce the Fiji plugin 2.2.3's numbers: its distance keys, starting guess, Levenberg-Marquardt and retries.")
    dtype: Literal["float32", "float64"] = Field("float32", description="Working precision.")
    n_gaussians: Union[int, str] = Field(
        1,
        description="Gaussians fitted to the subtracted profile: 1 (the plugin's single fit), n >= 2 "
        "(a joint fit of a sum of n, per-component results), or 'auto' (1..max_gaussians, chosen by BIC).",
    )
    max_gaussians: int = Field(3, ge=1, strict=True, description="Largest number of Gaussians 'auto' tries.")

    @field_validator("n_gaussians", mode="before")
    @classmethod
    def _whole_number_or_auto(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("give a whole number >= 1 or 'auto'")

    @model_validator(mode="after")
    def _contributions_need_fit(self):
        if self.contributions and self.mode == "correlation":
            raise ValueError(
                "contributions need a Gaussian fit; set mode to 'full' or 'no_confidence', "
                "or contributions to false"
            )
        if self.n_gaussians != 1 and self.mode == "correlation":
            raise ValueError(
                "n_gaussians needs the Gaussian fit; set mode to 'full' or 'no_confidence', or n_gaussians to 1"
            )
        return self


class CoefficientsConfig(Section):
    """The classic coefficients (Pearson, Manders, ...), computed per frame."""

    threshold: Optional[Union[Literal["costes"], float, tuple[float, float]]] = Field(
        None,
        description="Threshold for both channels, or [channel 1, channel 2], or 'costes' (automatic, "
        "per frame). None: no threshold.",
    )
    threshold_range: Union[float, tuple[float, float]] = Field(
        0.0, description="Soft-threshold range (>= 0), one value or a pair."
    )
    maps: bool = Field(False, description="Store the per-voxel coefficient maps.")
    van_steensel_shifts: Optional[int] = Field(
        20, ge=0, description="Van Steensel shifts -S..S (voxels); null: no Van Steensel CCF."
    )
    van_steensel_axis: Literal["x", "y", "z"] = Field("x", description="Axis of the Van Steensel shifts.")
    preset: Literal["huygens", "coloc2", "jacop", "skimage"] = Field(
        "huygens", description="Whose conventions (Manders denominators, > or >=, ICQ zeros, Costes rule)."
    )
    cytofluorogram: Optional[int] = Field(
        None, ge=2, description="Store the 2D histogram of the two channels with this many bins per axis."
    )
    costes_search: Optional[Literal["stepper", "bisection"]] = Field(
        None, description="With preset coloc2 and threshold 'costes': Coloc 2's search, 'stepper' (its "
        "default) or 'bisection'."
    )

    @model_validator(mode="after")
    def _search_of_coloc2(self):
        if self.costes_search is not None and self.preset != "coloc2":
            raise ValueError(f"costes_search applies to preset 'coloc2' only (got preset '{self.preset}')")
        return self

    @field_validator("threshold_range")
    @classmethod
    def _non_negative(cls, value):
        values = value if isinstance(value, tuple) else (value,)
        if any(v < 0 for v in values):
            raise ValueError("threshold_range must be >= 0")
        return value


class OutputConfig(Section):
    """The results store and the reports beside it."""

    store: Path = Field(description="The Zarr v3 results store to write (a folder, e.g. results.zarr).")
    reports: bool = Field(True, description="Write CSV tables, plots and a summary beside the store.")
    overwrite: bool = Field(
        False, description="Replace an existing store written with a different config."
    )
    profile_range: Union[Literal["auto", "full"], float] = Field(
        "auto",
        description="How far the stored profiles reach (the fit always uses the whole profile): 'auto' "
        "(ccc.max_distance when set, else a quarter of the frame's shorter side; float32), 'full' "
        "(out to the frame's corner, float64, as cccdask.ccc returns it) or a distance in the "
        "input's units (float32).",
    )

    _abs_path = field_validator("store", mode="after")(resolve_path)

    @field_validator("profile_range", mode="after")
    @classmethod
    def _positive_range(cls, value):
        if not isinstance(value, str) and not (value > 0 and value != float("inf")):
            raise ValueError(f"must be 'auto', 'full' or a positive distance in the input's units, not {value!r}")
        return value


class LocalClusterConfig(Section):
    """An embedded distributed LocalCluster (the default)."""

    n_workers: Optional[int] = Field(None, ge=1, description="Worker processes; default: one per core.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per worker process.")
    memory_limit: Optional[str] = Field(
        None, description="Memory per worker, e.g. '4GiB'; default: the machine's memory shared out."
    )
    processes: bool = Field(True, description="Workers in separate processes (recommended).")
    dashboard_address: Optional[str] = Field(
        ":8787", description="Dashboard port (':8787'; ':0' any free port) listening on `host`, or "
        "'address:port' to listen elsewhere; null: no dashboard."
    )
    host: str = Field(
        "127.0.0.1", description="Address the scheduler, workers, nannies and dashboard listen on. "
        "Default loopback: nothing is reachable from another machine (reach the dashboard through an "
        "SSH tunnel). Another address (e.g. '0.0.0.0') opens them, unauthenticated, to the network."
    )


class SlurmConfig(Section):
    """A SLURM cluster through dask-jobqueue (``pip install 'cccdask[slurm]'``)."""

    cores: int = Field(ge=1, description="Cores per job.")
    memory: str = Field(description="Memory per job, e.g. '32GB'.")
    processes: int = Field(1, ge=1, description="Worker processes per job.")
    jobs: int = Field(1, ge=1, description="Number of jobs (fixed scale) or the maximum when adapt.")
    adapt: bool = Field(False, description="Scale between 1 and `jobs` jobs with the load.")
    walltime: str = Field("01:00:00", description="Job time limit.")
    queue: Optional[str] = Field(None, description="Partition.")
    account: Optional[str] = Field(None, description="Account to charge.")
    interface: Optional[str] = Field(None, description="Network interface of the workers, e.g. 'ib0'.")
    scheduler_interface: Optional[str] = Field(
        None, description="Network interface the scheduler (on the submitting machine) listens on, when it "
        "differs from the workers', e.g. 'eth0' on a login node whose workers use 'ib0'.")
    python: Optional[str] = Field(
        None, description="The workers' Python interpreter on the nodes, e.g. '/home/me/envs/ccc/bin/python' "
        "(default: the one running cccdask).")
    worker_extra_args: Optional[list[str]] = Field(
        None, description="Extra `dask worker` arguments. Default: '--lifetime' and '--lifetime-stagger' "
        "derived from walltime, so workers retire before SLURM kills their job and new jobs replace them; "
        "[] turns that off.")
    job_name: str = Field("cccdask", description="SLURM job name (shown by squeue).")
    job_directives_skip: list[str] = Field(
        default_factory=list, description="#SBATCH directives dask-jobqueue would write that the site "
        "rejects, e.g. ['--mem'] where memory is set per partition.")
    death_timeout: Optional[float] = Field(
        60.0, gt=0, description="Seconds (s) a worker waits for the scheduler before it gives up and its "
        "job ends.")
    local_directory: Optional[str] = Field(None, description="Worker scratch folder on the nodes.")
    log_directory: Optional[str] = Field(None, description="Folder for the job logs.")
    job_extra_directives: list[str] = Field(default_factory=list, description="Extra #SBATCH lines.")
    job_script_prologue: list[str] = Field(
        default_factory=list, description="Shell lines run before the worker starts (module load ...)."
    )
    dashboard_address: Optional[str] = Field(
        ":8787", description="Dashboard port on the submitting machine, listening on 127.0.0.1 (reach it "
        "through an SSH tunnel), or 'address:port' to listen elsewhere; null: no dashboard."
    )
    shared_directory: Optional[Path] = Field(
        None, description="A folder the jobs can read, for the run's temporary TLS credentials (removed "
        "after the run). Default: the folder of output.store, which the workers write anyway."
    )

    _abs_path = field_validator("shared_directory", mode="after")(resolve_path)


class TLSFiles(Section):
    """TLS credentials (PEM files) for joining a scheduler that requires TLS."""

    ca_file: Path = Field(description="Certificate of the authority that signed the scheduler's and "
                          "workers' certificates.")
    cert: Path = Field(description="This client's certificate.")
    key: Optional[Path] = Field(None, description="This client's private key (readable by its owner "
                                "only); None: the key is in the `cert` file.")

    _abs_path = field_validator("ca_file", "cert", "key", mode="after")(resolve_path)


class ClusterConfig(Section):
    """Where the work runs. The same run code works on all of them."""

    kind: Literal["local", "address", "scheduler_file", "slurm", "threads", "synchronous"] = Field(
        "local", description="local: start an embedded LocalCluster; address / scheduler_file: "
        "connect to a running scheduler; slurm: submit workers with dask-jobqueue; threads: a "
        "thread pool in this process (no distributed); synchronous: one task at a time in this "
        "process (debugging, determinism checks)."
    )
    threads: Optional[int] = Field(
        None, ge=1, description="Threads for kind 'threads'; default: one per core."
    )
    address: Optional[str] = Field(None, description="Scheduler address, e.g. 'tcp://10.0.0.5:8786' "
                                   "('tls://...' with a `security` section).")
    scheduler_file: Optional[Path] = Field(None, description="Scheduler file written by `dask scheduler`.")
    local: LocalClusterConfig = Field(default_factory=LocalClusterConfig)
    slurm: Optional[SlurmConfig] = None
    connect_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the scheduler/workers.")
    security: Optional[Union[bool, TLSFiles]] = Field(
        None, description="TLS. slurm: true (default) encrypts and authenticates every connection with "
        "temporary credentials made for the run; false: plain TCP (warned). address / scheduler_file: "
        "the files {ca_file, cert, key} of a scheduler that requires TLS. Not for the in-machine kinds."
    )

    _abs_path = field_validator("scheduler_file", mode="after")(resolve_path)

    @model_validator(mode="after")
    def _kind_needs_its_settings(self):
        needed = {"address": "address", "scheduler_file": "scheduler_file", "slurm": "slurm"}
        key = needed.get(self.kind)
        if key is not None and getattr(self, key) is None:
            raise ValueError(f"cluster.kind is {self.kind!r} but cluster.{key} is not set")
        return self

    @model_validator(mode="after")
    def _security_fits_kind(self):
        files = isinstance(self.security, TLSFiles)
        if self.kind in ("local", "threads", "synchronous") and self.security is not None:
            raise ValueError(f"cluster.security does not apply to kind {self.kind!r} (it listens on "
                             f"cluster.local.host, loopback by default); remove it")
        if self.kind == "slurm" and files:
            raise ValueError("cluster.security for kind 'slurm' is true (temporary credentials made for "
                             "the run, the default) or false (plain TCP)")
        if self.kind in ("address", "scheduler_file") and self.security is True:
            raise ValueError(f"cluster.security for kind {self.kind!r} names the scheduler's TLS files: "
                             f"security: {{ca_file: ca.pem, cert: client.pem, key: client-key.pem}}")
        if self.kind == "address":
            scheme = self.address.split("://")[0] if "://" in self.address else None
            if scheme == "tls" and not files:
                raise ValueError(f"cluster.address {self.address} is a TLS scheduler but cluster.security is "
                                 f"not set; give security: {{ca_file: ..., cert: ..., key: ...}}")
            if files and scheme not in (None, "tls"):
                raise ValueError(f"cluster.security is set but cluster.address {self.address} is not TLS; "
                                 f"use the scheduler's tls:// address")
        return self


class ExecutionConfig(Section):
    """How frames become tasks, and the Dask settings of the run."""

    frames_per_task: Union[Literal["auto"], int] = Field(
        "auto",
        description="Frames per task (and per store chunk along t). 'auto': 1 for large frames, "
        "more for small ones (about 4 Mvoxels per task, at least ~16 tasks).",
    )
    retries: int = Field(1, ge=0, description="Times a task that raised is retried.")
    stall_timeout: float = Field(
        300.0, ge=0,
        description="Seconds (s) a run waits while frames remain and no worker is connected, or no task "
        "progresses and none is running, before it stops with exit 1 and says why (for SLURM: the jobs' "
        "state and log). The store stays incomplete; a rerun completes it. 0 waits forever.",
    )
    memory_budget: Optional[str] = Field(
        None,
        description="Memory one task may use, e.g. '2GiB'. Default: the workers' memory limit per thread. "
        "A frame over it is correlated tile by tile when ccc.max_distance is set, else refused.",
    )
    tile_shape: Optional[list[int]] = Field(
        None,
        description="Tile edge per spatial axis (voxels, (z,) y, x) of the tiled path. Set: every frame is "
        "analysed tile by tile with these tiles (needs ccc.max_distance). Default: frames over memory_budget "
        "are tiled, with the largest tiles that fit it.",
    )
    memory_target: Optional[float] = Field(
        None, gt=0, le=1, description="distributed.worker.memory.target (fraction)."
    )
    memory_spill: Optional[float] = Field(
        None, gt=0, le=1, description="distributed.worker.memory.spill (fraction)."
    )
    memory_pause: Optional[float] = Field(
        None, gt=0, le=1, description="distributed.worker.memory.pause (fraction)."
    )
    memory_terminate: Optional[float] = Field(
        None, gt=0, le=1, description="distributed.worker.memory.terminate (fraction)."
    )
    stale_lock_after: float = Field(
        600.0, gt=0,
        description="Seconds after which the lock of another run on the same store counts as stale and is "
        "taken over (the running driver refreshes its lock every minute or sooner; a lock whose process "
        "is gone on this host is stale at once).",
    )
    dask_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Other Dask settings, e.g. {'distributed.scheduler.allowed-failures': 5}.",
    )

    @field_validator("memory_budget")
    @classmethod
    def _bytes(cls, value):
        if value is not None:
            from dask.utils import parse_bytes

            try:
                if parse_bytes(value) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError(f"memory_budget must be a size such as '512MiB' or '4GB', not {value!r}") from None
        return value

    @field_validator("tile_shape")
    @classmethod
    def _tile_edges(cls, value):
        if value is not None and (not 2 <= len(value) <= 3 or any(edge < 1 for edge in value)):
            raise ValueError(f"tile_shape must give a positive tile edge (voxels) per spatial axis, e.g. "
                             f"[512, 512] or [64, 256, 256], not {value!r}")
        return value

    @field_validator("frames_per_task")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and value < 1:
            raise ValueError("frames_per_task must be 'auto' or an integer >= 1")
        return value

    def dask_settings(self) -> dict[str, Any]:
        """The Dask config keys this section sets."""
        settings = dict(self.dask_config)
        for name in ("target", "spill", "pause", "terminate"):
            value = getattr(self, f"memory_{name}")
            if value is not None:
                settings[f"distributed.worker.memory.{name}"] = value
        return settings




class PipelineConfig(Section):
    """A complete run: inputs, analyses, output, cluster."""

    input: InputConfig
    ccc: CCCConfig = Field(default_factory=CCCConfig)
    coefficients: Optional[CoefficientsConfig] = Field(
        None, description="Compute the classic coefficients per frame too (off when absent)."
    )
    if Preprocessing is not None:
        preprocess: Optional[Preprocessing] = Field(  # type: ignore[valid-type]
            None, description="Per-frame preparation before the analyses (off when absent)."
        )
    output: OutputConfig
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    def analysis_identity(self) -> dict[str, Any]:
        """What decides the store's content: a store is resumed only under the same identity.

        The cluster, the Dask settings, the report flag and ``overwrite`` are left out:
        they change how the work runs, not what it writes.
        """
        keys = {"input", "ccc", "coefficients", "preprocess"}
        identity = self.model_dump(mode="json", include=keys)
        identity["frames_per_task"] = self.execution.frames_per_task
        identity["profile_range"] = self.output.profile_range
        return identity

    @property
    def preprocessing(self):
        """The preprocessing settings, or None (also when the module is not installed)."""
        return getattr(self, "preprocess", None)


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: ``source: key.path: message (got value)``."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        # drop the union/model tags pydantic adds to the location
        loc = ".".join(p for p in loc.split(".") if p not in ("ImageSource", "str", "float", "list[float]",
                                                              "tuple[float, float]", "Path"))
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        got = item.get("input")
        shown = "" if isinstance(got, (dict, list)) or item["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{source}: {loc or '<top level>'}: {message}{shown}")
    return "\n".join(dict.fromkeys(lines))


def config_from_dict(data: Any, base_dir: Path | str | None = None, source: str = "config") -> PipelineConfig:
    """Validate a dict (as read from YAML) into a :class:`PipelineConfig`.

    Raises
    ------
    ConfigError
        Naming every key path that is wrong.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping with the sections input, output, ... "
            f"(got {type(data).__name__})"
        )
    try:
        return PipelineConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (YAML says keys are unique;
    PyYAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # PyYAML reports an unhashable key itself
            if key in seen:
                first = seen[key]
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first at line {first.line + 1}); give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | str) -> PipelineConfig:
    """Read and validate a YAML config file; relative paths are taken from its folder.

    Raises
    ------
    ConfigError
        A missing or unreadable file, a folder given instead of a file, invalid YAML
        (with line and column), a key given twice, or invalid content (with the key path).
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        hint = f" ({', '.join(found[:5])} {'is' if len(found) == 1 else 'are'} there)" if found else ""
        raise ConfigError(f"{path} is a folder, not a config file; give the YAML file itself{hint}.")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config: {error}") from None
    return config_from_dict(data, base_dir=path.parent.absolute(), source=str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the YAML config (for editors and validation elsewhere)."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cccdask run configuration"
    return schema


PEM_REDACTED = "<PEM data not recorded>"


def without_pem_data(value: Any) -> Any:
    """``value`` (nested dicts, lists, strings) with every string holding PEM data (a key or
    certificate given inline, e.g. in ``execution.dask_config``) replaced by a note."""
    if isinstance(value, dict):
        return {key: without_pem_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_pem_data(item) for item in value]
    return PEM_REDACTED if isinstance(value, str) and "-----BEGIN" in value else value


def config_json(config: PipelineConfig) -> str:
    """The resolved config as JSON text (stored in the results' provenance), without key material:
    paths of credentials appear, never their contents."""
    return json.dumps(without_pem_data(config.model_dump(mode="json")), indent=1, sort_keys=True)
