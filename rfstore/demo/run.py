"""The demo end to end: generated scenes, the small trained network, every stage, the report."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rfstore.datasets import Preprocessing
from rfstore.demo.config import DemoConfig
from rfstore.models import ModelSpec
from rfstore.pipeline.run import PipelineConfig, PipelineResult, run_pipeline
from rfstore.pipeline.stage import Progress
from rfstore.pipeline.stages.init import InitConfig

__all__ = ["run_demo"]


def _network(config: DemoConfig, say: Callable[[str], None]) -> tuple[str, str | None]:
    """The model spec and weights: the shipped ones, or freshly trained ones."""
    from rfstore.demo.network import WEIGHTS_INFO, shipped_weights

    shipped = json.loads((shipped_weights().parent / Path(WEIGHTS_INFO).name).read_text())
    if not config.retrain:
        say(f"demo: network trained on generated scenes (held-out accuracy {shipped['heldout_accuracy']:.3f}, "
            f"shipped with rfstore)")
        return "rfstore.demo.network:tiny_alexnet_trained", None
    from rfstore.demo.train import train

    out = config.weights_out if config.weights_out is not None else config.store.parent / "tiny_alexnet.pt"
    say(f"demo: retraining the network from scratch into {out} (a few minutes)")
    result = train(out, progress=lambda message: say(f"demo: train: {message}"))
    same = result.sha256 == shipped.get("sha256")
    say(f"demo: trained in {result.seconds:.0f} s: train accuracy {result.train_accuracy:.3f}, "
        f"held-out accuracy {result.heldout_accuracy:.3f}; sha256 {result.sha256[:12]}... "
        + ("(identical to the shipped weights)" if same else
           "(differs from the shipped weights: another CPU or torch version rounds differently)"))
    return "rfstore.demo.network:tiny_alexnet", str(out)


def run_demo(config: DemoConfig, say: Callable[[str], None], progress: Progress | None = None) -> PipelineResult:
    """Generate the scenes (unless they are there), then every stage and the report beside the store."""
    from rfstore.demo.scenes import CLASSES, scene_folder_matches, write_scene_folder
    from rfstore.demo.train import deterministic_cpu

    began = time.perf_counter()
    model, weights = _network(config, say)
    force = config.force or config.retrain
    data = config.store.parent / "demo-scenes"
    if force or not scene_folder_matches(data, per_class=config.per_class, seed=config.seed):
        write_scene_folder(data, per_class=config.per_class, seed=config.seed, replace=True)
        say(f"demo: wrote {config.per_class * len(CLASSES)} generated scenes and their concept masks to {data}")
    size, stride = config.occluder
    init = InitConfig(model=ModelSpec(model, weights, 0), data=data, name="tiny_alexnet",
                      preprocessing=Preprocessing.tensor(), layers=config.layers)
    pipeline = PipelineConfig(init=init, force=force, report=config.store.parent / "report", options={
        "activations": {"batch_size": 32, "num_workers": 0}, "topk": {"k": config.k},
        "occlude": {"size": size, "stride": stride, "fill": "zero"}})
    # one torch thread: no slower for this tiny network on an idle CPU, much faster on a busy one
    # (torch's worker threads spin waiting for each other when they do not get a core)
    with deterministic_cpu():
        result = run_pipeline(config.store, pipeline, say=say, progress=progress)
    say(f"demo: done in {time.perf_counter() - began:.1f} s; store at {config.store}; "
        f"inspect with 'rfstore status {config.store}'")
    say(f"demo: open the report: {(config.store.parent / 'report' / 'index.html').resolve()}")
    return result
