"""Option types shared by the commands, and the small parsers that turn them into configs."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

StorePath = Annotated[Path, typer.Argument(help="Store: a .zarr directory (Zarr v3) or a .h5/.hdf5 file.")]
Model = Annotated[str, typer.Option(
    "--model", help="torchvision:NAME | module.path:factory | file.py:factory | torchscript:PATH | pickle:PATH.")]
Data = Annotated[Path, typer.Option("--data", help="Image folder (searched recursively; subfolders are classes), "
                                                   "or a Broden folder (index.csv, images/).")]
Weights = Annotated[str | None, typer.Option(
    help="torchvision: DEFAULT | enum name | none | PATH (state_dict); factories: PATH to a state_dict.")]
Seed = Annotated[int, typer.Option(help="torch.manual_seed before building a randomly initialised model.")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow pickle:PATH models (unpickling runs arbitrary code: only for files you trust).")]
Name = Annotated[str | None, typer.Option(help="Key of the network in the store (default: the model's name).")]
Preprocess = Annotated[str | None, typer.Option(
    help="imagenet (resize 256, crop 224, ImageNet mean/std) | tensor (native size, no normalisation).")]
Resize = Annotated[int | None, typer.Option(help="Resize the shorter side to this many pixels.")]
Crop = Annotated[int | None, typer.Option(help="Centre crop to this square size.")]
Mean = Annotated[str | None, typer.Option(help="Normalisation mean: R,G,B, or one value for every channel.")]
Std = Annotated[str | None, typer.Option(help="Normalisation std: R,G,B, or one value for every channel.")]
Layers = Annotated[str | None, typer.Option(
    help="Comma list of module names (features.4), shell patterns (features.*, *prelu*) and module types "
         "(type:PReLU). Default: every activation module (ReLU family, ELU, SELU, CELU, GELU, SiLU, Mish, "
         "Hardswish, Hardtanh, Softplus, Softsign, Tanh, Threshold).")]
Channels = Annotated[int | None, typer.Option(
    help="Input channels: 1 reads the images as grayscale, 3 as RGB (default: the model's first "
         "convolution, checked by a forward pass).")]
Output = Annotated[str | None, typer.Option(
    help="For a model with several outputs: the class scores, by position (0, 1, ...) or name (dict key, "
         "field). Default: the only output whose last dimension is the number of classes.")]
Force = Annotated[bool, typer.Option("--force", help="Recompute, invalidating what depends on the result.")]


def _set_wait(value: bool) -> bool:
    """``--wait``: this process's writers queue behind another writer instead of failing."""
    from rfstore.cli.app import say
    from rfstore.store.lock import set_wait_policy

    set_wait_policy(value, notify=say if value else None)
    return value


Wait = Annotated[bool, typer.Option(
    "--wait", callback=_set_wait,
    help="If another process is writing the store, wait for it to finish instead of failing.")]
Network = Annotated[str | None, typer.Option(help="Network in the store (needed when it holds several).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps.")]
Workers = Annotated[int | None, typer.Option(min=0, help="DataLoader worker processes (default: cores - 1, at most 4).")]
MemoryFormat = Annotated[str, typer.Option(
    help="Tensor layout of the forward pass: auto (channels_last on a CPU, 20-30% faster there; "
         "contiguous elsewhere), channels_last or contiguous. A model that cannot run channels_last "
         "falls back to contiguous.")]
Maps = Annotated[str | None, typer.Option(help="Comma list of layers whose full activation maps are kept (float16).")]
K = Annotated[int, typer.Option("--k", min=1, help="Images kept per unit.")]
Measure = Annotated[str, typer.Option(help="Rank images by the unit's spatial max or mean.")]
ClassMap = Annotated[str | None, typer.Option(help="Folder name to output index, e.g. geo=0,lmk=1.")]


def _check_cluster(ctx: typer.Context, value: str | None) -> str | None:
    if value is not None:
        from rfstore.pipeline.cluster import parse_local

        try:
            parse_local(value)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        if ctx.params.get("scheduler") is not None:
            raise typer.BadParameter("--cluster and --scheduler exclude each other: start a local cluster or join one")
    return value


def _check_scheduler(ctx: typer.Context, value: str | None) -> str | None:
    if value is not None and ctx.params.get("cluster") is not None:
        raise typer.BadParameter("--cluster and --scheduler exclude each other: start a local cluster or join one")
    return value


Cluster = Annotated[str | None, typer.Option(
    callback=_check_cluster, metavar="local:N",
    help="Run on a new local Dask cluster of N worker processes (Zarr stores only; needs rfstore[dist]).")]
Scheduler = Annotated[str | None, typer.Option(
    callback=_check_scheduler, metavar="tcp://HOST:PORT",
    help="Run on the running Dask cluster of this scheduler (Zarr stores only; needs rfstore[dist]).")]


@contextmanager
def cluster_session(store: Path, cluster: str | None, scheduler: str | None) -> Iterator[Any]:
    """A Dask client for ``--cluster``/``--scheduler`` (None without them); an HDF5 store is refused first."""
    if cluster is None and scheduler is None:
        yield None
        return
    from rfstore.cli.app import say
    from rfstore.pipeline.cluster import ClusterSpec, session

    spec = ClusterSpec.from_options(cluster, scheduler)
    with session(store, spec) as client:
        say(f"running on {spec.describe()}")
        yield client


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """Three numbers R,G,B, or one for every channel (a grayscale network needs one)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in split_list(text))
    except ValueError:
        raise typer.BadParameter(f"{option} takes three numbers, R,G,B, or one") from None
    if len(values) not in (1, 3):
        raise typer.BadParameter(f"{option} takes three numbers, R,G,B, or one")
    return values


def parse_class_map(text: str | None) -> dict[str, int]:
    mapping: dict[str, int] = {}
    for item in split_list(text):
        name, sep, index = item.partition("=")
        if not sep or not index.strip().lstrip("-").isdigit():
            raise typer.BadParameter(f"--class-map entries are NAME=INDEX, not {item!r}")
        mapping[name.strip()] = int(index)
    return mapping


def parse_units(text: str | None) -> slice | None:
    """``START:STOP[:STEP]`` (or a single unit ``N``) as a slice."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) == 1:
            unit = int(parts[0])
            return slice(unit, unit + 1)
        if len(parts) in (2, 3):
            start = int(parts[0]) if parts[0] else 0
            stop = int(parts[1]) if parts[1] else None
            step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
            if step < 1 or start < 0 or (stop is not None and stop < start):
                raise ValueError
            return slice(start, stop, step)
    except ValueError:
        pass
    raise typer.BadParameter(f"--units takes START:STOP[:STEP] with 0 <= START <= STOP and STEP >= 1, not {text!r}")
