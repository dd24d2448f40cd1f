"""bestfit: best-fit packing of tokenized corpora into fixed-length training sequences.

The library behind the ``bestfit`` command: ``pack`` runs the whole pipeline; the stages are importable on their own
(``read``, ``histogram``, ``plan``, ``write``, ``report``); ``loader`` reads a packed output back as training batches.
The names below are imported when first used, so a process that needs one stage (a JSONL parse worker) does not
pay for the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BestfitError": "errors", "InputError": "errors", "OptionError": "errors", "OutputError": "errors",
    "LengthHistogram": "histogram", "piece_counts": "histogram",
    "PackedDataset": "loader", "PackedLoader": "loader",
    "PackOptions": "pipeline", "PackResult": "pipeline", "pack": "pipeline",
    "CapacityPlan": "plan", "Placement": "plan", "assign_slots": "plan", "plan_capacities": "plan",
    "plan_pieces": "plan",
}

if TYPE_CHECKING:
    from .errors import BestfitError, InputError, OptionError, OutputError
    from .histogram import LengthHistogram, piece_counts
    from .loader import PackedDataset, PackedLoader
    from .pipeline import PackOptions, PackResult, pack
    from .plan import CapacityPlan, Placement, assign_slots, plan_capacities, plan_pieces


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bestfit_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "BestfitError", "CapacityPlan", "InputError", "LengthHistogram", "OptionError", "OutputError", "PackedDataset",
    "PackedLoader", "PackOptions",
    "PackResult", "Placement", "__version__", "assign_slots", "pack", "piece_counts", "plan_capacities",
    "plan_pieces",
]
