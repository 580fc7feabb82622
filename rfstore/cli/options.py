"""Every command-line option, declared once, grouped by the stage whose config it sets.

Stage options default to None, meaning "not given": the pipeline then uses what the store recorded
for the stage, or the stage's default (:mod:`rfstore.pipeline.defaults`, shown in the help).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from rfstore.pipeline import defaults as D

__all__ = ["Opt", "signature", "split_list", "parse_floats", "parse_class_map", "parse_units"]


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def split_tuple(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(split_list(text))


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


def parse_class_map(text: str | None) -> dict[str, int] | None:
    if text is None:
        return None
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


def _set_wait(value: bool) -> bool:
    """``--wait``: this process's writers queue behind another writer instead of failing."""
    from rfstore.store.lock import set_wait_policy

    set_wait_policy(value, notify=(lambda line: typer.echo(line, err=True)) if value else None)
    return value


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


def choice(*values: str) -> Callable[[str | None], str | None]:
    """A callback accepting ``values`` only (shown as choices by the metavar)."""
    def check(value: str | None) -> str | None:
        if value is not None and value not in values:
            raise typer.BadParameter(f"choose one of {', '.join(values)}, not {value!r}")
        return value
    return check


# -- the store, the network, the run ------------------------------------------------------
StorePath = Annotated[Path, typer.Argument(help="Store: a .zarr directory (Zarr v3) or a .h5/.hdf5 file.",
                                           show_default=False)]
Network = Annotated[str | None, typer.Option(help="Network in the store (needed when it holds several).")]
Force = Annotated[bool, typer.Option("--force", help="Recompute, forgetting what depends on the result.")]
Wait = Annotated[bool, typer.Option(
    "--wait", callback=_set_wait, help="If another process is writing the store, wait for it instead of failing.")]
Cluster = Annotated[str | None, typer.Option(
    callback=_check_cluster, metavar="local:N",
    help="Run on a new local Dask cluster of N worker processes (Zarr stores only; needs the dist extra: "
         "pip install 'rfstore[dist]').")]
Scheduler = Annotated[str | None, typer.Option(
    callback=_check_scheduler, metavar="tcp://HOST:PORT",
    help="Run on the running Dask cluster of this scheduler (Zarr stores only; needs the dist extra).")]
Device = Annotated[str | None, typer.Option(metavar="auto|cpu|cuda|cuda:N|mps",
                                            help=f"Where the network runs [default: {D.DEVICE}].")]
Layers = Annotated[str | None, typer.Option(
    help="Comma list of layers: module names (features.4), shell patterns (features.*, *prelu*) and module types "
         "(type:PReLU). At init, the layers recorded (default: every activation module: the ReLU family, ELU, "
         "SELU, CELU, GELU, SiLU, Mish, Hardswish, Hardtanh, Softplus, Softsign, Tanh, Threshold); later, the "
         "recorded layers to work on (default: all).")]
Units = Annotated[str | None, typer.Option(metavar="START:STOP[:STEP]",
                                           help="Units of each layer to work on (default: all).")]

# -- init -----------------------------------------------------------------------------------
RunModel = Annotated[str | None, typer.Option(
    "--model", help="As for init: needed unless the store holds the network already.")]
RunData = Annotated[Path | None, typer.Option("--data", help="As for init: needed with --model.")]
Report = Annotated[Path | None, typer.Option(
    "--report", help="Write the HTML report into this folder at the end, for the same layers and units.")]
Model = Annotated[str, typer.Option(
    "--model", help="torchvision:NAME | module.path:factory | file.py:factory | torchscript:PATH | pickle:PATH.")]
Data = Annotated[Path, typer.Option("--data", help="Image folder (searched recursively; subfolders are classes), "
                                                   "or a Broden folder (index.csv, images/).")]
Weights = Annotated[str | None, typer.Option(
    help="torchvision: DEFAULT | enum name | none (random init) | PATH (state_dict); factories: PATH to a "
         "state_dict.")]
Seed = Annotated[int, typer.Option(help="torch.manual_seed before building a randomly initialised model.")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow pickle:PATH models (unpickling runs arbitrary code: only for files you trust).")]
Name = Annotated[str | None, typer.Option(help="Key of the network in the store (default: the model's name).")]
Preprocess = Annotated[str | None, typer.Option(
    metavar="imagenet|tensor", callback=choice("imagenet", "tensor"),
    help="imagenet (resize 256, crop 224, ImageNet mean/std; the default for torchvision models) | tensor "
         "(native size, no normalisation).")]
Resize = Annotated[int | None, typer.Option(min=1, help="Resize the shorter side to this many pixels.")]
Crop = Annotated[int | None, typer.Option(min=1, help="Centre crop to this square size.")]
Mean = Annotated[str | None, typer.Option(help="Normalisation mean: R,G,B, or one value for every channel.")]
Std = Annotated[str | None, typer.Option(help="Normalisation std: R,G,B, or one value for every channel.")]
Channels = Annotated[int | None, typer.Option(
    metavar="1|3", help="Input channels: 1 reads the images as grayscale, 3 as RGB (default: the model's first "
                        "convolution, checked by a forward pass).")]
Split = Annotated[str | None, typer.Option(
    help="With a Broden folder: the images of this split only (init: recorded; dissect --method netdissect: "
         "dissected).")]

# -- the stages -------------------------------------------------------------------------------
BatchSize = Annotated[int | None, typer.Option(min=1, help=f"Images per forward pass [default: {D.BATCH_SIZE}].")]
Workers = Annotated[int | None, typer.Option(min=0, help="DataLoader worker processes (default: cores - 1, "
                                                         "at most 4).")]
Maps = Annotated[str | None, typer.Option(help="Comma list of layers whose full activation maps are kept "
                                               "(float16).")]
MemoryFormat = Annotated[str | None, typer.Option(
    metavar="auto|channels_last|contiguous", callback=choice("auto", "channels_last", "contiguous"),
    help="Tensor layout of the forward pass: auto (channels_last on a CPU, faster there; contiguous "
         f"elsewhere) [default: {D.MEMORY_FORMAT}].")]
K = Annotated[int | None, typer.Option("--k", min=1, help=f"Images kept per unit [default: {D.K}].")]
Measure = Annotated[str | None, typer.Option(metavar="max|mean", callback=choice("max", "mean"),
                                             help=f"Rank images by the unit's spatial max or mean "
                                                  f"[default: {D.MEASURE}].")]
Size = Annotated[int | None, typer.Option(min=1, help=f"Occluder side in pixels [default: {D.OCCLUDER_SIZE}].")]
Stride = Annotated[int | None, typer.Option(min=1, help=f"Occluder stride in pixels "
                                                        f"[default: {D.OCCLUDER_STRIDE}].")]
Fill = Annotated[str | None, typer.Option(metavar="noise|zero|mean|NUMBER",
                                          help=f"Occluder content [default: {D.OCCLUDER_FILL}].")]
NoiseSeed = Annotated[int | None, typer.Option("--noise-seed", help=f"Seed of the noise fill "
                                                                    f"[default: {D.NOISE_SEED}].")]
SeedAlias = Annotated[int | None, typer.Option("--seed", hidden=True, help="Old name of --noise-seed.")]
Dtype = Annotated[str | None, typer.Option(
    metavar="float32|bfloat16|float16", callback=choice("float32", "bfloat16", "float16"),
    help=f"Precision of occlusion: float32 is exact; bfloat16 and float16 are faster on a GPU and approximate "
         f"[default: {D.OCCLUDER_DTYPE}].")]
OccludeBatchSize = Annotated[int | None, typer.Option(
    "--occlude-batch-size", min=2, help=f"Occluder positions per batch (memory only) "
                                        f"[default: {D.POSITIONS_PER_BATCH}].")]
BatchSizeAlias = Annotated[int | None, typer.Option("--batch-size", hidden=True, min=2,
                                                    help="Old name of --occlude-batch-size.")]
Threshold = Annotated[float | None, typer.Option(
    help=f"Empirical RF = where rf_map >= threshold * max [default: {D.RF_THRESHOLD}, the half-maximum].")]
RFMethod = Annotated[str | None, typer.Option(
    "--rf-method", metavar="occlusion|gradient", callback=choice("occlusion", "gradient"),
    help=f"occlusion (Zhou et al.) | gradient (Luo et al. 2016) [default: {D.RF_METHOD}].")]
MethodAlias = Annotated[str | None, typer.Option("--method", hidden=True, callback=choice("occlusion", "gradient"),
                                                 help="Old name of --rf-method.")]
MinIoU = Annotated[float | None, typer.Option(min=0.0, max=1.0,
                                              help=f"Smallest IoU for a label [default: {D.MIN_IOU}, NetDissect's].")]
Masks = Annotated[str | None, typer.Option(
    metavar="rf|activation", callback=choice("rf", "activation"),
    help="dissect --method topk: the segmentations scored: rf (the empirical RF on each top image, Zhou) or "
         f"activation (the activation map above its 99.5% quantile, NetDissect; needs --maps layers) "
         f"[default: {D.MASKS}].")]
DissectMethod = Annotated[str, typer.Option(
    metavar="topk|netdissect", callback=choice("topk", "netdissect"),
    help="topk: IoU over each unit's top-K images with the dataset's concept masks (after segment); netdissect: "
         "NetDissect's IoU over every image of a Broden folder (needs only init).")]
Categories = Annotated[str | None, typer.Option(
    help="--method netdissect: comma list of Broden categories (default: all of category.csv).")]
CheckpointSeconds = Annotated[float | None, typer.Option(
    min=0.0, help=f"--method netdissect: save the quantiles' state at most this often (seconds; 0: after every "
                  f"block) [default: {D.CHECKPOINT_SECONDS:.0f}].")]
ClassMap = Annotated[str | None, typer.Option(help="Folder name to output index, e.g. geo=0,lmk=1.")]
Output = Annotated[str | None, typer.Option(
    help="For a model with several outputs: the class scores, by position (0, 1, ...) or name (dict key, "
         "field). Default: the only output whose last dimension is the number of classes.")]


@dataclass(frozen=True)
class Opt:
    """One option of a command: its parameter name and type, and the config field it sets."""

    name: str
    annotation: Any
    field: str | None = None
    convert: Callable[[Any], Any] | None = None
    default: Any = None

    def value(self, given: Any) -> Any:
        return self.convert(given) if self.convert is not None and given is not None else given


SELECTION = (Opt("layers", Layers, convert=split_tuple), Opt("units", Units, convert=parse_units))
COMMON = (Opt("network", Network), Opt("force", Force, default=False), Opt("wait", Wait, default=False))
CLUSTER = (Opt("cluster", Cluster), Opt("scheduler", Scheduler))
REQUIRED = inspect.Parameter.empty
INIT = (Opt("model", Model, default=REQUIRED), Opt("data", Data, default=REQUIRED), Opt("weights", Weights), Opt("seed", Seed, default=0),
        Opt("trust_pickle", TrustPickle, default=False), Opt("name", Name), Opt("preprocess", Preprocess),
        Opt("resize", Resize), Opt("crop", Crop), Opt("mean", Mean), Opt("std", Std), Opt("layers", Layers),
        Opt("channels", Channels), Opt("split", Split))
DEVICE = (Opt("device", Device),)
RUN_INIT = (Opt("model", RunModel), Opt("data", RunData), *INIT[2:])
STAGE_OPTIONS: dict[str, tuple[Opt, ...]] = {
    "activations": (Opt("batch_size", BatchSize), Opt("workers", Workers, "num_workers"),
                    Opt("maps", Maps, convert=split_tuple), Opt("memory_format", MemoryFormat), *DEVICE),
    "topk": (Opt("k", K), Opt("measure", Measure)),
    "occlude": (Opt("size", Size), Opt("stride", Stride), Opt("fill", Fill), Opt("noise_seed", NoiseSeed, "seed"),
                Opt("dtype", Dtype), Opt("occlude_batch_size", OccludeBatchSize, "batch_size"), *DEVICE),
    "rf": (Opt("threshold", Threshold), Opt("rf_method", RFMethod, "method"), *DEVICE),
    "segment": (),
    "dissect": (Opt("min_iou", MinIoU), Opt("masks", Masks)),
}
"""Each stage's own options (``Opt.field`` names the config field when it differs from the option)."""


def signature(*groups: Sequence[Opt], first: Sequence[inspect.Parameter] = ()) -> inspect.Signature:
    """A command's signature: ``first``, then the options of ``groups`` (each name once, first one wins)."""
    params = list(first)
    seen = {p.name for p in params}
    for group in groups:
        for option in group:
            if option.name not in seen:
                seen.add(option.name)
                params.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY,
                                                default=option.default, annotation=option.annotation))
    return inspect.Signature(params)


def store_parameter() -> inspect.Parameter:
    return inspect.Parameter("store", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=StorePath)


def stage_values(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The config values a command's options give for stage ``name`` (None: not given)."""
    return {(o.field or o.name): o.value(given.get(o.name)) for o in STAGE_OPTIONS[name]}
