"""The pure-Python reference model (``tdpfast.reference.model``) as a benchmark subject: the
same cases at a smaller size, to report how much faster the C engine is and whether the
counts agree. A failure of the reference model is an error of the run, never a blank cell."""
from __future__ import annotations

import traceback
from typing import Callable, Dict, Iterable, Optional, Tuple


class ReferenceModelError(Exception):
    """The reference model raised while a step measured it. ``step`` names the step,
    ``__cause__`` is the reference model's exception."""

    def __init__(self, step: str, cause: BaseException):
        self.step = step
        self.error_type = type(cause).__name__
        self.detail = str(cause)
        self.traceback = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        super().__init__(f"the reference model failed in step {step!r}: {self.error_type}: {self.detail}")

    def as_json(self) -> dict:
        return {"step": self.step, "source": "reference_model", "type": self.error_type, "message": self.detail}


def reference_model():
    """The module ``tdpfast.reference.model`` (part of the package: an import error propagates)."""
    from ..reference import model

    return model


def run_reference(step: str, fn: Callable, *args):
    """``fn(model, *args)``; any exception becomes a ReferenceModelError of ``step``."""
    model = reference_model()
    try:
        return fn(model, *args)
    except Exception as e:  # re-raised as the run's error, with the cause attached
        raise ReferenceModelError(step, e) from e


def speedup(ref_value: float, c_value: float, better: str) -> float:
    """How many times the C engine beats the reference on a row's unit."""
    return ref_value / c_value if better == "lower" else c_value / ref_value


def attach(rows: Iterable[dict], got: Dict[str, Tuple[float, int, str]]) -> None:
    """Attach ``got`` = {row id: (value, size, size_unit)} measured on the reference to the
    engine rows; a row the reference does not measure says so (status "not_measured")."""
    for r in rows:
        v: Optional[Tuple[float, int, str]] = got.get(r["id"])
        if v is None:
            r["reference"] = {"status": "not_measured"}
        else:
            r["reference"] = {"status": "ok", "value": v[0], "size": v[1], "size_unit": v[2],
                              "speedup": speedup(v[0], r["value"], r["better"])}
