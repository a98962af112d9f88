"""The ``cccdask`` command line: run, validate, inspect, demo, schema.

It wires config, pipeline and store together and prints; it computes nothing itself.
Errors a user can fix (bad config, missing files, mismatched shapes, unwritable
output, an existing store of another config) print one message naming the problem
and exit with a non-zero status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:  # the CLI imports the heavy stack (NumPy, Dask, ...) only where a command needs it
    from cccdask.config import PipelineConfig

app = typer.Typer(
    name="cccdask",
    help="Colocalization by Cross Correlation and the classic coefficients, at any scale, on Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags show as flags, and rich's help renderer is not loaded
)
console = Console()
errors = Console(stderr=True)

EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


def _fail(message: str, code: int = EXIT_FAILED) -> None:
    errors.print("Error:", style="bold red", end=" ")
    errors.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def interrupted(store: Path) -> None:
    """End a run stopped by Ctrl-C (SIGINT): one line saying which frames are saved, exit 130.

    The one place an interrupted run ends, so that its message and exit status are the
    same wherever the interruption is caught.
    """
    import numpy as np

    from cccdask.io.store import read_completion, read_store_attrs

    saved = np.array([], dtype=int)
    if read_store_attrs(store) is not None:
        try:
            saved = np.flatnonzero(read_completion(store).complete)
        except Exception:  # a store without a readable record: nothing to claim as saved
            pass
    if saved.size == 0:
        line = "interrupted: no frame is saved yet; rerun the same command to start again"
    else:
        which = f"frame {saved[0]} is" if saved.size == 1 else f"frames {_ranges(saved)} are"
        line = f"interrupted: {which} saved; rerun the same command to resume"
    errors.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def _load(config: Path) -> "PipelineConfig":
    from cccdask.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as error:
        _fail(str(error), EXIT_CONFIG)


def _run_with_progress(config: "PipelineConfig", overwrite: bool | None) -> Path:
    """Run with a live bar on a terminal, progress lines otherwise (a log file, a batch job)."""
    from cccdask.pipeline import FrameTooLargeError, PipelineError, StoreConflictError, run
    from cccdask.progress import ProgressLog

    failures = (FileNotFoundError, PermissionError, FileExistsError, StoreConflictError, FrameTooLargeError,
                PipelineError, ValueError, RuntimeError, OSError)
    if not console.is_terminal:
        def write(line: str) -> None:
            console.file.write(line + "\n")
            console.file.flush()

        report = ProgressLog(write)
        try:
            return run(config, overwrite=overwrite, progress=report.update, log=report.message, phase=report.phase)
        except KeyboardInterrupt:
            interrupted(Path(config.output.store))
        except failures as error:
            _fail(str(error))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[failed]}"))
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("opening the inputs", total=None, failed="")

        def progress(done: int, total: int, failed: int = 0) -> None:
            bar.update(task, completed=done, total=total, description="frames",
                       failed=f"{failed} without a result" if failed else "")

        def phase(name: str) -> None:
            bar.update(task, description=name)

        def log(message: str) -> None:
            bar.console.print(message, markup=False, highlight=False, soft_wrap=True)

        try:
            return run(config, overwrite=overwrite, progress=progress, log=log, phase=phase)
        except KeyboardInterrupt:
            bar.stop()
            interrupted(Path(config.output.store))
        except failures as error:
            bar.stop()
            _fail(str(error))


def _fmt(value, decimals: int = 3) -> str:
    import numpy as np

    value = float(value)
    return "-" if not np.isfinite(value) else f"{value:.{decimals}f}"


def _summary_table(store: Path, max_rows: int = 30, truth=None, expected=None):
    import numpy as np
    import xarray as xr
    from rich.table import Table

    from cccdask.io.store import FRAME_OK, FRAME_STATUS_NAMES
    from cccdask.quality import dataset_quality, quality_names

    with xr.open_zarr(str(store)) as ds:
        n = ds.sizes["t"]
        table = Table(title=f"{store.name}: {n} frame(s), mode {ds.attrs.get('mode')}, units {ds.attrs.get('units')}")
        columns = ["frame"]
        if truth is not None:
            columns += ["true d", "peak"]
        names = [c for c in ("mean", "sigma", "confidence", "r_squared") if c in ds]
        headers = {"confidence": "conf.", "r_squared": "R²"}
        columns += [headers.get(n, n) for n in names] + ["status"]
        for column in columns:
            table.add_column(column, justify="right")
        rows = list(range(n)) if n <= max_rows else list(range(max_rows // 2)) + list(range(n - max_rows // 2, n))
        values = {name: np.asarray((ds[name].isel(component=0) if "component" in ds[name].dims else ds[name]).values)
                  for name in names}  # several Gaussians: component 1
        status = np.asarray(ds["frame_status"].values)
        errors_ = np.asarray(ds["frame_error"].values)
        flags = dataset_quality(ds)
        for k, i in enumerate(rows):
            if k and rows[k - 1] != i - 1:
                table.add_row(*(["..."] * len(columns)))
            row = [str(i)]
            if truth is not None:
                row += [_fmt(truth[i]), _fmt(expected[i])]
            row += [_fmt(values[name][i]) for name in names]
            label = FRAME_STATUS_NAMES.get(int(status[i]), str(status[i]))
            if label == "ok" and flags is not None and status[i] == FRAME_OK and flags[i]:
                label = quality_names(flags[i])
            row.append(label if not errors_[i] else f"{label}: {str(errors_[i])[:40]}")
            table.add_row(*row)
    return table


def _quality_lines(store: Path) -> list[str]:
    import xarray as xr

    from cccdask.io.reports import quality_lines

    with xr.open_zarr(str(store)) as ds:
        return quality_lines(ds)


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="The YAML run configuration."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing store: recompute every frame (another config, changed "
        "inputs, or the same). Without it: the config's output.overwrite."),
) -> None:
    """Run the analysis a YAML config describes (resumes an interrupted run of the same config)."""
    settings = _load(config)
    store = _run_with_progress(settings, overwrite or None)  # no flag: the config's output.overwrite
    console.print(_summary_table(store))
    for line in _quality_lines(store):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    from cccdask.io.reports import reports_folder

    console.print(f"Results: {store}")
    if settings.output.reports:
        console.print(f"Reports: {reports_folder(store)}")


@app.command("validate")
def validate_command(
    config: Path = typer.Argument(..., help="The YAML run configuration."),
    inputs: bool = typer.Option(True, "--inputs/--no-inputs", help="Also open the input files (metadata only)."),
) -> None:
    """Check a config (keys, types, TLS files) and, by default, that its inputs open and match."""
    settings = _load(config)
    _check_tls_files(settings)
    if inputs:
        from cccdask.examples import EXAMPLES, example_name
        from cccdask.pipeline import open_inputs, output_state

        try:
            opened = open_inputs(settings)
            state = output_state(settings)  # opens the inputs again: metadata only, cheap
        except FileNotFoundError as error:
            name = example_name(str(config))
            hint = (f" This is an example config: write its data with `cccdask demo --example {config}`."
                    if name in EXAMPLES else "")
            _fail(str(error) + hint)
        except (ValueError, PermissionError, FileExistsError) as error:
            _fail(str(error))
        frames = opened.frames
        from cccdask.pipeline.inputs import describe_settled

        for line in describe_settled(frames):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print(
            f"{config}: valid. {frames.n_frames} frame(s) of {dict(zip(frames.spatial_dims, frames.frame_shape))}, "
            f"spacing {tuple(frames.spacing)} {frames.units}, mask: "
            f"{'none' if frames.mask is None else ('per frame' if 't' in frames.mask.dims else 'shared')}. "
            f"Output {settings.output.store}: " + {"new": "will be created", "resume": "exists with this config "
            "(a run resumes it)", "replace": "exists and will be replaced (overwrite)"}[state],
            highlight=False,
        )
        from cccdask.pipeline import FrameTooLargeError
        from cccdask.pipeline.plan import describe_execution

        try:
            console.print(describe_execution(settings, frames), highlight=False)
        except (FrameTooLargeError, ValueError) as error:
            _fail(str(error))
    else:
        console.print(f"{config}: valid.")
    from cccdask.checks import background_warning, machine_warnings, slurm_problems

    problems, slurm_warnings = slurm_problems(settings, frames if inputs else None)
    if problems:
        _fail(" ".join(problems), EXIT_CONFIG)
    warnings = machine_warnings(settings) + slurm_warnings
    if inputs:
        warnings.append(background_warning(settings, frames))
    for warning in filter(None, warnings):
        errors.print("Warning:", style="bold yellow", end=" ")
        errors.print(warning, markup=False, highlight=False, soft_wrap=True)


def _check_tls_files(settings: PipelineConfig) -> None:
    """Fail naming every problem of cluster.security's files (missing, a key others can read)."""
    from cccdask.config import TLSFiles
    from cccdask.security import tls_file_problems

    if isinstance(settings.cluster.security, TLSFiles):
        problems = tls_file_problems(settings.cluster.security)
        if problems:
            _fail("\n".join(problems))


@app.command("inspect")
def inspect_command(store: Path = typer.Argument(..., help="A results store (.zarr folder).")) -> None:
    """What a results store holds and which frames are complete or missing."""
    from cccdask.io.store import FRAME_STATUS_NAMES, STATUS_COMPLETE, read_completion, read_store_attrs

    if not store.exists():
        _fail(f"{store} does not exist: no run has written results there yet (a run stopped before its first "
              f"frame was saved leaves no store). Check the path, or run the config whose output.store it is.")
    attrs = read_store_attrs(store)
    if attrs is None:
        _fail(f"{store} is not a cccdask results store.")
    record = read_completion(store)
    n = len(record.status)
    complete = attrs.get("cccdask_status") == STATUS_COMPLETE
    missing = record.missing
    console.print(f"Store: {store}", highlight=False)
    console.print(
        f"Status: {'[green]complete[/green]' if complete else '[yellow]incomplete[/yellow] (interrupted or running)'}"
    )
    inputs = attrs.get("inputs", {})
    for name in ("image1", "image2", "mask"):
        if inputs.get(name):
            channel = inputs[name].get("channel")
            console.print(f"{name}: {inputs[name]['path']}" + (f" (channel {channel})" if channel is not None else ""),
                          highlight=False)
    console.print(f"Mode: {attrs.get('mode')}; spacing {attrs.get('spacing')} {attrs.get('units')}", highlight=False)
    console.print(f"Frames: {n}; complete {n - missing.size}; missing {missing.size}")
    if missing.size:
        console.print(f"Missing frames: {_ranges(missing)}", highlight=False)
    import numpy as np

    failed = np.flatnonzero((record.status != 0) & (record.status != 1))
    if failed.size:
        console.print(f"Frames without a result ({failed.size}):")
        for i in failed[:50]:
            console.print(f"  {i}: {FRAME_STATUS_NAMES.get(int(record.status[i]))}: {record.errors[i]}", highlight=False)
    if complete and "best_frame" in attrs:
        console.print(f"Best frame: {attrs['best_frame']}")
    import xarray as xr

    with xr.open_zarr(str(store)) as ds:
        from rich.table import Table

        table = Table(title="Variables")
        for column in ("name", "dims", "shape", "dtype"):
            table.add_column(column)
        for name, variable in ds.data_vars.items():
            table.add_row(name, ", ".join(variable.dims), str(tuple(variable.shape)), str(variable.dtype))
        console.print(table)


def _ranges(indices) -> str:
    from cccdask.pipeline.record import frame_ranges

    return frame_ranges(indices)


@app.command("schema")
def schema_command(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the schema here instead of printing it."),
) -> None:
    """Print (or write) the JSON Schema of the YAML config."""
    from cccdask.config import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")
        console.print(f"Wrote {output}")


def demo_config(store: str = "results.zarr") -> dict:
    """The config ``cccdask demo`` writes next to its data (also configs/demo.yaml)."""
    return {
        "input": {
            "image1": {"path": "input.ome.zarr", "channel": 0},
            "image2": {"path": "input.ome.zarr", "channel": 1},
            "mask": {"path": "mask.ome.zarr"},
        },
        "ccc": {"mode": "full", "max_distance": 2.0},
        "output": {"store": store, "reports": True},
        "cluster": {"kind": "local"},
    }


def _write_example(example: str) -> None:
    """``demo --example``: write the data of an example config (a name or the config's path)."""
    from cccdask.examples import EXAMPLES, NOT_LOCAL, example_name, write_example_data

    name = example_name(example)
    config_path = Path(example) if example.endswith(".yaml") else Path("configs") / f"{name}.yaml"
    if name not in EXAMPLES and name not in NOT_LOCAL:
        _fail(f"unknown example {name!r}; choose one of {', '.join(sorted(EXAMPLES))} (or the path of its config).")
    if not config_path.is_file():
        _fail(f"{config_path} not found: run this in the folder that holds configs/, or give the config's path "
              f"(cccdask demo --example path/to/{name}.yaml).")
    try:
        written = write_example_data(name, config_path)
    except (ValueError, OSError) as error:
        _fail(str(error))
    for path in written:
        console.print(f"Wrote {path}", highlight=False)
    console.print(f"Now: cccdask validate {config_path} && cccdask run {config_path}", highlight=False, soft_wrap=True)


@app.command("demo")
def demo_command(
    output: Path = typer.Option(Path("cccdask-demo"), "--output", "-o", metavar="FOLDER",
                                help="Folder for the data, config and results."),
    frames: Optional[int] = typer.Option(None, min=1, metavar="N", help="Number of frames (distances cycle; default 8)."),
    size: int = typer.Option(256, min=64, metavar="PIXELS", help="Frame size (pixels per side)."),
    overwrite: bool = typer.Option(True, "--overwrite/--resume", help="Replace results of an earlier demo."),
    example: Optional[str] = typer.Option(
        None, "--example", metavar="NAME",
        help="Only write the data of an example config (timeseries-3d, preprocess-2d, demo; or the config's "
             "path) where that config reads it, then run it with `cccdask run configs/NAME.yaml`."),
) -> None:
    """Synthetic two-channel spots paired at known distances, analysed end to end on a local cluster."""
    if example is not None:
        return _write_example(example)
    import numpy as np
    import yaml

    from cccdask.config import load_config
    from cccdask.examples import DEMO_DISTANCES, write_demo_data

    frames = len(DEMO_DISTANCES) if frames is None else frames
    spacing = (0.05, 0.05)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _fail(f"cannot create the demo folder {output}: {error}")
    console.print(f"Writing {frames} synthetic frames of {size}x{size} (spacing {spacing[0]} um) to {output}")
    distances, scenes = write_demo_data(output, frames, size)
    config_path = output / "demo.yaml"
    config_path.write_text(
        "# written by `cccdask demo`; rerun with: cccdask run " + str(config_path) + "\n"
        + yaml.safe_dump(demo_config(), sort_keys=False)
    )
    settings = load_config(config_path)
    store = _run_with_progress(settings, overwrite)
    expected = np.array([s.expected_peak for s in scenes])
    console.print(_summary_table(store, truth=distances, expected=expected))
    import xarray as xr

    with xr.open_zarr(str(store)) as ds:
        means = np.asarray(ds["mean"].values)
    error = np.abs(means - distances)
    console.print(
        f"Fitted mean vs true distance: median |error| {np.nanmedian(error):.3f} um "
        f"(pixel {spacing[0]} um, PSF sigma 0.1 um). 'expected peak' is where a radial profile of "
        f"two blurred points peaks (d - s^2/2d), slightly inside the true distance.",
        highlight=False,
    )
    from cccdask.io.reports import reports_folder

    console.print(f"Results: {store}\nReports: {reports_folder(store)}\nConfig:  {config_path}")


def main() -> None:  # pragma: no cover - console entry point
    app()
