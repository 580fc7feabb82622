"""Every stage, in the order their upstream declarations give."""
from __future__ import annotations

from rfstore.pipeline.stage import Stage, order
from rfstore.pipeline.stages import activations, dissect, netdissect, occlude, rf, segment, topk, validate

__all__ = ["STAGES", "RUN", "stage"]

STAGES: dict[str, Stage] = {s.name: s for s in order(
    m.STAGE for m in (activations, topk, occlude, rf, segment, dissect, validate, netdissect))}
"""Every stage by name, in pipeline order."""

RUN: tuple[str, ...] = tuple(name for name in STAGES if name not in ("validate", "netdissect"))
"""The stages of a whole run (``rfstore run``): every stage but the two that answer other questions
(``validate``: the network's accuracy; ``netdissect``: Network Dissection on a Broden folder)."""


def stage(name: str) -> Stage:
    return STAGES[name]
