"""Stage ``validate``: the network's accuracy and confusion matrix on the labelled folder.

The original study used this to check that its preprocessing matched the one the
network was trained with (AvatarNet: geo/lmk).

A model with several outputs (tuple, list, dict, namedtuple, dataclass) is
validated on its class scores: the output named by ``--output`` (position or
name), or else the only output whose last dimension is the number of classes:
the dataset's folders first, then the network's last ``Linear``
(:func:`rfstore.models.choose_output`).

Reads: ``/{network}`` attrs, ``image_path``, ``image_label``.
Writes: ``/{network}/validation/confusion`` (true_class, predicted_class), with
coordinates ``true_class`` and ``predicted_class`` (the mapped classes, then
``other`` for outputs that no class maps to); attrs ``accuracy``, ``n_images``,
``class_map``, ``class_names``, ``output`` (the label of the class scores, ``""``
for a model with one output). The output's label is one of the stage's parameters (given with ``--output``
or found), so asking for the output it found is not a change.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from rfstore.pipeline import defaults
from rfstore.pipeline.stage import Job, Stage, counted
from rfstore.datasets import ImageFolderDataset
from rfstore.errors import RfstoreError, UsageError
from rfstore.models import choose_output, named_outputs, pick_output
from rfstore.models.inputs import probe_forward
from rfstore.pipeline.stages.activations import default_workers
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.devices import exact_float32, resolve_device
from rfstore.recorded.progress import StageProgress, fingerprint
from rfstore.store import ArraySpec
from rfstore.store.layout import write_coordinate

STAGE_VERSION = 1


@dataclass(frozen=True)
class ValidateConfig:
    class_map: dict[str, int] = field(default_factory=dict)
    output: str | None = None
    batch_size: int = defaults.BATCH_SIZE
    device: str = defaults.DEVICE
    num_workers: int | None = None


@dataclass(frozen=True)
class ValidationReport:
    classes: list[str]
    class_map: dict[str, int]
    confusion: np.ndarray  # (n_classes, n_classes + 1): true folder class x predicted (mapped classes, other)
    n_images: int
    output: str = ""  # the label of the class scores among the model's outputs ("" for a single output)
    n_outputs: int = 0  # their number of columns

    @property
    def accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion[:, : len(self.classes)]) / total) if total else float("nan")


def resolve_class_map(classes: list[str], class_map: dict[str, int], num_classes: int) -> dict[str, int]:
    """Folder class name -> output index (default: the i-th folder is output i)."""
    if not classes:
        raise RfstoreError("validate needs a labelled folder (one subfolder per class); this dataset has no classes")
    if not class_map:
        class_map = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(class_map) - set(classes))
    if unknown:
        raise UsageError(f"names {', '.join(unknown)}, not folders of the dataset ({', '.join(classes)})", "class_map")
    missing = [c for c in classes if c not in class_map]
    if missing:
        raise UsageError(f"does not map the folder(s) {', '.join(missing)}", "class_map")
    bad = {c: i for c, i in class_map.items() if num_classes > 0 and not 0 <= i < num_classes}
    if bad:
        raise UsageError(f"indices {bad} are outside the network's {num_classes} outputs", "class_map")
    return dict(class_map)


def scores_output(ctx: NetworkContext, model: torch.nn.Module, choice: str | None) -> tuple[str, int]:
    """The label of the class scores among the model's outputs and their number of classes.

    One forward pass on a zero input of the recorded size; see the module docstring.
    """
    output = probe_forward(model, (ctx.input_channels, *ctx.input_size))
    counts = [len(ctx.attrs.get("classes", [])), int(ctx.attrs.get("num_classes", -1))]
    label = choose_output(named_outputs(output), choice, counts)
    return label, int(pick_output(output, label).shape[1])


def _complete(tracker: StageProgress, fp: str, force: bool) -> bool:
    record = tracker.record()
    return not force and record is not None and record.fingerprint == fp and record.state == "complete"


def _stored_report(ctx: NetworkContext, tracker: StageProgress, classes: list[str], class_map: dict[str, int],
                   output: str | None, force: bool) -> ValidationReport | None:
    """The stored report when validate is complete with this class map and the output asked for (or any, when
    none is asked) is the one it recorded by its label; None otherwise (the model then decides)."""
    record = tracker.record()
    if force or record is None or record.state != "complete" or record.params.get("class_map") != class_map:
        return None
    if "output" in record.params and output not in (None, record.params["output"]):
        return None
    group = f"{ctx.network}/validation"
    attrs = ctx.store.attrs(group)
    confusion = ctx.store.read(f"{group}/confusion")
    return ValidationReport(classes, class_map, confusion, int(attrs["n_images"]), str(attrs.get("output", "")),
                            int(attrs.get("n_outputs", 0)))


def run_validate(ctx: NetworkContext, config: ValidateConfig, force: bool = False,
                 progress: Callable[[Iterator, int], Iterator] | None = None) -> ValidationReport:
    classes = list(ctx.attrs.get("classes", []))
    class_map = resolve_class_map(classes, config.class_map, -1)
    tracker = StageProgress(ctx.store, ctx.network, "validate")
    stored = _stored_report(ctx, tracker, classes, class_map, config.output, force)
    if stored is not None:  # done with these parameters: no model to load
        return stored
    device = resolve_device(config.device)
    model = ctx.load_model().module.to(device)
    scores_label, n_outputs = scores_output(ctx, model, config.output)  # errors come before the stage starts
    resolve_class_map(classes, class_map, n_outputs)
    record = tracker.record()
    # the output chosen, asked for or found, is a parameter; a store validated before it was recorded keeps
    # its fingerprint while no output is asked for
    params: dict[str, object] = {"class_map": class_map, "output": scores_label}
    if record is not None and "output" not in record.params and config.output is None:
        del params["output"]
    fp = fingerprint("validate", STAGE_VERSION, params, [ctx.attrs["init_fingerprint"]])
    group = f"{ctx.network}/validation"
    if _complete(tracker, fp, force):
        attrs = ctx.store.attrs(group)
        return ValidationReport(classes, class_map, ctx.store.read(f"{group}/confusion"), int(attrs["n_images"]),
                                scores_label, n_outputs)
    tracker.begin(params, fp, 1, force, upstream=("init",))

    labels = ctx.store.read(f"{ctx.network}/image_label")
    indices = [int(i) for i in np.flatnonzero(labels >= 0)]
    output_to_column = {index: classes.index(name) for name, index in class_map.items()}
    confusion = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)
    dataset = ImageFolderDataset(ctx.dataset_root, list(ctx.image_paths()), ctx.preprocessing, indices)
    workers = default_workers() if config.num_workers is None else config.num_workers
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=workers, collate_fn=dataset.collate)
    n_images = 0
    with torch.inference_mode(), exact_float32():
        for image_ids, images, errors in (loader if progress is None else progress(loader, len(indices))):
            bad = {image for image, _ in errors}
            good_ids = [int(i) for i in image_ids.numpy() if int(i) not in bad]
            if not good_ids:
                continue
            predicted = pick_output(model(images.to(device)), scores_label).argmax(dim=1).cpu().numpy()
            for image, output in zip(good_ids, predicted):
                confusion[labels[image], output_to_column.get(int(output), len(classes))] += 1
            n_images += len(good_ids)

    ctx.store.require_group(group)
    write_coordinate(ctx.store, group, "true_class", np.arange(len(classes)))
    write_coordinate(ctx.store, group, "predicted_class", np.arange(len(classes) + 1))
    ctx.store.create_array(f"{group}/confusion", ArraySpec(confusion.shape, "int64", ("true_class", "predicted_class"),
                                                           confusion.shape, 0), data=confusion)
    report = ValidationReport(classes, class_map, confusion, n_images, scores_label, n_outputs)
    ctx.store.update_attrs(group, {"accuracy": report.accuracy, "n_images": n_images, "class_map": class_map,
                                   "class_names": classes + ["other"], "output": scores_label,
                                   "n_outputs": n_outputs})
    tracker.mark_done(0)
    tracker.complete()
    return report


def format_report(report: ValidationReport) -> str:
    names = report.classes + ["other"]
    width = max(8, *(len(n) + 2 for n in names))
    scores = f"output {report.output}, {report.n_outputs} columns" if report.output else f"{report.n_outputs} outputs"
    lines = [f"accuracy {report.accuracy:.4f} on {report.n_images} labelled images (class scores: {scores}; "
             f"class map {', '.join(f'{name}={index}' for name, index in report.class_map.items())})",
             "confusion (rows: folder class, columns: predicted class)",
             " " * width + "".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(report.classes, report.confusion):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


# -- the stage ---------------------------------------------------------------------------
def _run(job: Job) -> ValidationReport:
    progress = None
    if job.progress is not None:
        def progress(batches: Iterator, total: int) -> Iterator:
            return counted(batches, job.ticker("validate", total, "img"), lambda batch: len(batch[0]))
    return run_validate(job.ctx, job.config, job.force, progress=progress)


def summary(report: ValidationReport, ctx: NetworkContext) -> list[str]:
    return format_report(report).splitlines()


def changed(ctx: NetworkContext, config: ValidateConfig) -> bool:
    return True  # cheap when complete: run_validate reads the stored report back


STAGE = Stage("validate", ("init",), ValidateConfig, _run, summary, changed)
