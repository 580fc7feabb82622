"""The pipeline's commands: each maps its options to a :class:`~rfstore.pipeline.run.PipelineConfig` and calls
:func:`~rfstore.pipeline.run.run_pipeline`. Their signatures are assembled from the option groups of
:mod:`rfstore.cli.options`, so an option is declared once whatever the commands that take it."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from rfstore.cli import options as opt
from rfstore.cli.app import PIPELINE, app, check_store_path, handle_errors, progress, say

__all__ = ["register", "init_config", "pipeline_config"]


def register(name: str, doc: str, signature, handler: Callable[..., None], panel: str = PIPELINE) -> None:
    """Register ``handler(**options)`` as command ``name`` with ``signature`` and help ``doc``."""
    def command(**options: Any) -> None:
        handler(**options)

    command.__name__, command.__doc__ = name.replace("-", "_"), doc
    command.__signature__ = signature  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    app.command(name, rich_help_panel=panel)(handle_errors(command))


def init_config(given: dict[str, Any]):
    """The InitConfig of init's options (``model`` and ``data`` given)."""
    from rfstore.datasets import Preprocessing
    from rfstore.models import ModelSpec
    from rfstore.pipeline.stages.init import InitConfig

    preprocess, resize, crop = given.get("preprocess"), given.get("resize"), given.get("crop")
    mean, std = opt.parse_floats(given.get("mean"), "--mean"), opt.parse_floats(given.get("std"), "--std")
    explicit = any(v is not None for v in (resize, crop, mean, std))
    preprocessing = None
    if preprocess is not None or explicit:
        base = Preprocessing.imagenet() if preprocess == "imagenet" else Preprocessing.tensor()
        if (mean is None) != (std is None) and preprocess is None:
            raise typer.BadParameter("--mean and --std go together")
        preprocessing = Preprocessing(resize=resize if resize is not None else base.resize,
                                      crop=crop if crop is not None else base.crop,
                                      mean=mean if mean is not None else base.mean,
                                      std=std if std is not None else base.std)
    spec = ModelSpec(given["model"], given.get("weights"), given.get("seed", 0), bool(given.get("trust_pickle")))
    return InitConfig(model=spec, data=given["data"], name=given.get("name"), preprocessing=preprocessing,
                      layers=given.get("layers"), channels=given.get("channels"), split=given.get("split"))


def pipeline_config(stages: tuple[str, ...] | None, given: dict[str, Any], init=None, report: Path | None = None):
    """The PipelineConfig of a command's options: each stage's values, the selection, the run's settings."""
    from rfstore.pipeline.cluster import ClusterSpec
    from rfstore.pipeline.run import PipelineConfig

    options = {name: opt.stage_values(name, given) for name in opt.STAGE_OPTIONS}
    return PipelineConfig(
        init=init, network=given.get("network") or (given.get("name") if init is not None else None),
        stages=stages, options=options, layers=opt.split_tuple(given.get("layers")) or (),
        units=opt.parse_units(given.get("units")), force=bool(given.get("force")),
        cluster=ClusterSpec.from_options(given.get("cluster"), given.get("scheduler")), report=report)


def run_stages(store: Path, config, out: Callable[[str], None] = say) -> None:
    """Run the pipeline; its lines go to ``out`` (standard error, or standard output for a command's result)."""
    from rfstore.pipeline.run import run_pipeline

    run_pipeline(store, config, say=out, progress=progress)


# -- init and one command per stage ------------------------------------------------------------
def _init(store: Path, **given: Any) -> None:
    check_store_path(store)
    run_stages(store, pipeline_config((), given, init=init_config(given)))


register("init", "Record the network, its preprocessing, the image folder (or Broden folder) and the layers.",
         opt.signature(opt.INIT, opt.COMMON, first=[opt.store_parameter()]), _init)


def _stage(name: str, doc: str, *groups: tuple[opt.Opt, ...]) -> None:
    def handler(store: Path, **given: Any) -> None:
        check_store_path(store, must_exist=True)
        run_stages(store, pipeline_config((name,), _aliases(given)))

    register(name, doc, opt.signature(*groups, opt.COMMON, first=[opt.store_parameter()]), handler)


def _aliases(given: dict[str, Any]) -> dict[str, Any]:
    """The old spellings of renamed options (kept hidden where the contract names them) as the new ones."""
    for old, new in (("seed_alias", "noise_seed"), ("batch_size_alias", "occlude_batch_size"),
                     ("method_alias", "rf_method")):
        if given.get(old) is not None and given.get(new) is None:
            given[new] = given.pop(old)
    return given


_stage("activations", "Stream the images once; store each unit's spatial max, mean and argmax per image.",
       opt.STAGE_OPTIONS["activations"], opt.CLUSTER)
_stage("topk", "Each unit's K most activating images, with values and argmax positions.",
       opt.STAGE_OPTIONS["topk"], opt.CLUSTER)
_stage("occlude", "Discrepancy maps: slide an occluder over each unit's top images, record the activation drop.",
       opt.SELECTION, opt.STAGE_OPTIONS["occlude"], opt.CLUSTER,
       (opt.Opt("seed_alias", opt.SeedAlias), opt.Opt("batch_size_alias", opt.BatchSizeAlias)))
_stage("rf", "Empirical receptive fields: re-centre and average each unit's maps; their sizes (Zhou's Table 1).",
       opt.SELECTION, opt.STAGE_OPTIONS["rf"], (opt.Opt("method_alias", opt.MethodAlias),))
_stage("segment", "Segmentations: each unit's empirical RF placed on its top images (and NetDissect masks).",
       opt.SELECTION)


# -- dissect (two methods), validate --------------------------------------------------------
NETDISSECT = (opt.Opt("split", opt.Split), opt.Opt("categories", opt.Categories),
              opt.Opt("checkpoint_seconds", opt.CheckpointSeconds), opt.Opt("batch_size", opt.BatchSize),
              opt.Opt("workers", opt.Workers), *opt.DEVICE)


def _dissect(store: Path, method: str = "topk", **given: Any) -> None:
    check_store_path(store, must_exist=True)
    if method == "topk":
        wrong = [f"--{name.replace('_', '-')}" for name in ("split", "categories", "checkpoint_seconds", "batch_size",
                                                             "workers", "cluster", "scheduler")
                 if given.get(name) is not None]
        if wrong:
            raise typer.BadParameter(f"{', '.join(wrong)} only go with --method netdissect")
        run_stages(store, pipeline_config(("dissect",), given))
        return
    if given.get("masks") is not None:
        raise typer.BadParameter("--masks goes with --method topk: netdissect thresholds every activation map itself")
    config = pipeline_config(("netdissect",), given)
    values = {"layers": config.layers or None, "split": given.get("split"),
              "categories": opt.split_tuple(given.get("categories")), "min_iou": given.get("min_iou"),
              "batch_size": given.get("batch_size"), "device": given.get("device"),
              "num_workers": given.get("workers"), "checkpoint_seconds": given.get("checkpoint_seconds")}
    run_stages(store, _replace(config, options={"netdissect": values}))


def _replace(config, **changes: Any):
    import dataclasses

    return dataclasses.replace(config, **changes)


register("dissect", "Concept labels, as in Network Dissection (Bau et al. 2017): over each unit's top-K images "
                    "(topk) or a whole Broden folder (netdissect).",
         opt.signature([opt.Opt("method", opt.DissectMethod, default="topk")], opt.SELECTION[:1],
                       opt.STAGE_OPTIONS["dissect"], NETDISSECT, opt.CLUSTER, opt.COMMON,
                       first=[opt.store_parameter()]), _dissect)


def _validate(store: Path, **given: Any) -> None:
    check_store_path(store, must_exist=True)
    values = {"class_map": opt.parse_class_map(given.get("class_map")), "output": given.get("output"),
              "batch_size": given.get("batch_size"), "device": given.get("device"),
              "num_workers": given.get("workers")}
    run_stages(store, _replace(pipeline_config(("validate",), given), options={"validate": values}), typer.echo)


register("validate", "Accuracy and confusion matrix of the network on the labelled image folder.",
         opt.signature([opt.Opt("class_map", opt.ClassMap), opt.Opt("output", opt.Output),
                        opt.Opt("batch_size", opt.BatchSize), opt.Opt("workers", opt.Workers)], opt.DEVICE,
                       opt.COMMON, first=[opt.store_parameter()]), _validate)


# -- a whole run, its plan, the demo -----------------------------------------------------------
def _run_config(store: Path, given: dict[str, Any], report: Path | None):
    """The PipelineConfig of run's options (init when --model and --data are given)."""
    from rfstore.pipeline.run import initialised

    check_store_path(store)
    if (given.get("model") is None) != (given.get("data") is None):
        raise typer.BadParameter("run needs both --model and --data to record a network")
    init = init_config(given) if given.get("model") is not None else None
    if init is None and not initialised(store):
        raise typer.BadParameter(f"{store} is not an rfstore store yet: give --model and --data")
    return pipeline_config(None, _aliases(given), init=init, report=report)


def _run(store: Path, report: Path | None = None, dry_run: bool = False, **given: Any) -> None:
    config = _run_config(store, given, report)
    if dry_run:
        _plan(store, config)
    else:
        run_stages(store, config)


def _plan(store: Path, config) -> None:
    from rfstore.pipeline.plan import format_plan, plan_pipeline

    typer.echo(format_plan(plan_pipeline(store, config, say)))


_RUN_GROUPS = (opt.RUN_INIT, opt.SELECTION, *opt.STAGE_OPTIONS.values(), opt.CLUSTER, opt.COMMON,
               (opt.Opt("report", opt.Report),))
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Compute nothing: print what would be computed, its estimated time here and the bytes it "
                      "would store (as 'rfstore plan').")]
register("run", "Every stage in order (init, activations, topk, occlude, rf, segment, dissect[, report]), skipping "
                "what is done; options left out reuse what the store recorded.",
         opt.signature(*_RUN_GROUPS, [opt.Opt("dry_run", DryRun, default=False)], first=[opt.store_parameter()]),
         _run)
register("plan", "Compute nothing: what 'rfstore run' with these options would compute, its estimated time here "
                 "and the bytes it would store.",
         opt.signature(*_RUN_GROUPS, first=[opt.store_parameter()]),
         lambda store, report=None, **given: _plan(store, _run_config(store, given, report)))


def _demo(store: Path, per_class: int, seed: int, layers: str, retrain: bool, weights_out: Path | None,
          force: bool = False, wait: bool = False) -> None:
    from rfstore.demo.config import DemoConfig
    from rfstore.demo.run import run_demo

    check_store_path(store)
    run_demo(DemoConfig(store=store, per_class=per_class, seed=seed, layers=layers, retrain=retrain,
                        weights_out=weights_out, force=force), say, progress)


def _demo_signature():
    import inspect

    from rfstore.demo.config import DemoConfig

    d = DemoConfig()
    first = [inspect.Parameter("store", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d.store,
                               annotation=Annotated[Path, typer.Argument(help=f"Store to write (default: {d.store}).")])]
    own = [opt.Opt("per_class", Annotated[int, typer.Option(min=1, help="Generated images per class.")],
                   default=d.per_class),
           opt.Opt("seed", Annotated[int, typer.Option(help="Seed of the generated scenes.")], default=d.seed),
           opt.Opt("layers", Annotated[str, typer.Option(help="Layers to analyse.")], default=d.layers),
           opt.Opt("retrain", Annotated[bool, typer.Option(
               "--retrain", help="Train the network again from scratch (a few minutes) and use those weights; "
                                 "recomputes the store.")], default=False),
           opt.Opt("weights_out", Annotated[Path | None, typer.Option(
               help="Where --retrain writes the weights (default: tiny_alexnet.pt beside the store).")])]
    return opt.signature(own, opt.COMMON[1:], first=first)


register("demo", "The embedded default end to end: generated scenes, a small trained AlexNet-like network, every "
                 "stage, the report.", _demo_signature(), _demo)
