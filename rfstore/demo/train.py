"""Deterministic CPU training of the demo's :class:`~rfstore.demo.network.TinyAlexNet` on generated scenes.

The shipped weights (``rfstore/demo/weights/tiny_alexnet.pt``) come from
:func:`train` with the default :class:`TrainConfig`; ``rfstore demo --retrain``
(or ``python -m rfstore.demo.train OUT.pt``) runs it again. Everything is seeded
(``torch.manual_seed``, the scenes' own seeds, a seeded generator for shuffling
and augmentation) and runs on one CPU thread, so that a rerun on the same
platform and torch build gives bit-identical weights (other CPUs or torch
versions may round differently and give slightly different ones).

Training scenes (split ``train``) and held-out scenes (split ``heldout``) are
drawn with seeds distinct from each other and from the demo's own images
(split ``demo``), see :func:`rfstore.demo.scenes.scene_seed`. Inputs are pixel
values in [0, 1] (the store's ``--preprocess tensor``); the augmentation is a
seeded random flip and quarter turn (the square's 8 symmetries), which keep every
object what it is (a turned triangle is still a triangle, a turned bar a bar).
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rfstore.demo.network import TinyAlexNet
from rfstore.demo.scenes import CLASSES, scene_arrays
from rfstore.recorded.network import parameters_digest
from rfstore.models.threads import torch_threads


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters (recorded next to the weights).

    Parameters
    ----------
    train_per_class, heldout_per_class : int
        Generated scenes per class for training and for the held-out accuracy.
    epochs : int
        Passes over the training scenes.
    batch_size : int
        Scenes per optimisation step.
    lr : float
        Peak learning rate of AdamW (linear warm-up over the first epoch, then cosine decay to 0).
    weight_decay : float
        AdamW's decoupled weight decay.
    seed : int
        Seed of the initialisation, of the shuffling and of the scenes.
    size : int
        Scene side in pixels.
    """

    train_per_class: int = 400
    heldout_per_class: int = 100
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    size: int = 96


@dataclass(frozen=True)
class TrainResult:
    """Where the weights went and how well they do."""

    weights: Path
    info: Path
    sha256: str
    train_accuracy: float
    heldout_accuracy: float
    seconds: float


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """One CPU thread inside the block (the previous thread count after).

    On one thread every CPU kernel this training uses adds in a fixed order, so
    results repeat bit for bit. (``torch.use_deterministic_algorithms`` adds
    nothing on CPU here, and imports ``torch._inductor``: 10 s or more.)
    """
    with torch_threads(1):
        yield


def to_input(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 scenes as ``(N, 3, H, W)`` float32 inputs in [0, 1] (``ToTensor``)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


class AdamW:
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019) in plain tensor operations.

    ``torch.optim`` would do the same, but creating any of its optimisers imports
    ``torch._dynamo`` (10 s or more on a small CPU), longer than a short training.

    Parameters
    ----------
    params : list of torch.nn.Parameter
        The parameters to optimise.
    weight_decay : float
        Decay per unit of learning rate, applied to the weights directly.
    betas : tuple of float
        Decay rates of the running first and second moments.
    eps : float
        Added to the root of the second moment.
    """

    def __init__(self, params: list[nn.Parameter], weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = params
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One update with learning rate ``lr`` from the parameters' ``.grad``."""
        self.steps += 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
        for param, (first, second) in zip(self.params, self.moments, strict=True):
            if param.grad is None:
                continue
            param.mul_(1 - lr * self.weight_decay)
            first.mul_(beta1).add_(param.grad, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
            denominator = (second / correction2).sqrt_().add_(self.eps)
            param.addcdiv_(first, denominator, value=-lr / correction1)


def dihedral(batch: torch.Tensor, flips: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Flip ``(N, 3, H, W)`` inputs left-right where ``flips`` ``(N,)`` is set, then turn them ``turns`` ``(N,)``
    quarter turns."""
    batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
    out = batch.clone()
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(batch[chosen], k, dims=(2, 3))
    return out


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of ``(N, H, W, 3)`` uint8 scenes whose predicted class is ``labels`` ``(N,)``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(to_input(images[start:start + batch_size]))
            correct += int((logits.argmax(1).numpy() == labels[start:start + batch_size]).sum())
    return correct / max(len(images), 1)


def fit(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
        progress: Callable[[str], None] | None = None) -> TinyAlexNet:
    """Train a fresh :class:`TinyAlexNet` on ``(N, H, W, 3)`` uint8 scenes with ``(N,)`` labels.

    Call inside :func:`deterministic_cpu` for reproducible weights.
    """
    torch.manual_seed(config.seed)
    model = TinyAlexNet(num_classes=len(CLASSES))
    for module in model.modules():  # He initialisation: trains much faster than torch's default here
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    optimiser = AdamW(list(model.parameters()), weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(images) // config.batch_size)
    total = max(1, steps_per_epoch * config.epochs)
    warmup = min(steps_per_epoch, total)

    def learning_rate(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * 0.5 * (1 + float(np.cos(np.pi * (step - warmup) / max(1, total - warmup))))

    generator = torch.Generator().manual_seed(config.seed)
    targets = torch.from_numpy(labels)
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        flips = torch.rand(len(images), generator=generator) < 0.5
        turns = torch.randint(0, 4, (len(images),), generator=generator)
        running = 0.0
        for start in range(0, len(images), config.batch_size):
            index = order[start:start + config.batch_size]
            batch = to_input(images[index.numpy()])
            batch = dihedral(batch, flips[index], turns[index])
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch), targets[index])
            loss.backward()
            optimiser.step(learning_rate(step))
            step += 1
            running += float(loss.detach()) * len(index)
        if progress is not None:
            progress(f"epoch {epoch + 1}/{config.epochs}: loss {running / len(images):.3f}")
    return model.eval()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train(out: Path, config: TrainConfig = TrainConfig(),
          progress: Callable[[str], None] | None = None) -> TrainResult:
    """Generate the scenes, train, write the state dict to ``out`` and a JSON record beside it.

    The JSON (``out`` with suffix ``.json``) holds the file's sha256, the
    sha256 of the parameters as ``rfstore init`` records it
    (``parameters_sha256``), the training parameters, the train and held-out
    accuracies, the torch version and the training time.
    """
    began = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _message: None)
    say(f"generating {config.train_per_class} training and {config.heldout_per_class} held-out scenes per class")
    train_images, train_labels = scene_arrays(config.train_per_class, config.seed, "train", config.size)
    held_images, held_labels = scene_arrays(config.heldout_per_class, config.seed, "heldout", config.size)
    with deterministic_cpu():
        model = fit(config, train_images, train_labels, progress)
        train_acc = accuracy(model, train_images, train_labels)
        held_acc = accuracy(model, held_images, held_labels)
    buffer = io.BytesIO()  # saved through a buffer, the archive does not name the file: same bytes, same sha256
    torch.save(model.state_dict(), buffer)
    out.write_bytes(buffer.getvalue())
    seconds = time.perf_counter() - began
    digest = sha256_file(out)
    info = out.with_suffix(".json")
    info.write_text(json.dumps({
        "weights": out.name, "sha256": digest, "parameters_sha256": parameters_digest(model),
        "classes": list(CLASSES), "parameters": asdict(config),
        "train_accuracy": round(train_acc, 4), "heldout_accuracy": round(held_acc, 4),
        "torch_version": torch.__version__, "seconds": round(seconds, 1),
    }, indent=1) + "\n")
    return TrainResult(out, info, digest, train_acc, held_acc, seconds)


def main(argv: list[str] | None = None) -> None:
    """``python -m rfstore.demo.train OUT.pt``: retrain with the default parameters."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("tiny_alexnet.pt")
    result = train(out, progress=lambda message: print(message, file=sys.stderr))
    print(f"wrote {result.weights} (sha256 {result.sha256[:12]}...): train accuracy {result.train_accuracy:.3f}, "
          f"held-out accuracy {result.heldout_accuracy:.3f}, {result.seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
