"""bestfit: best-fit packing of tokenized corpora into fixed-length training sequences.

The library behind the ``bestfit`` command: ``pack`` runs the whole pipeline; the stages are importable on their own
(``read``, ``histogram``, ``plan``, ``write``, ``report``); ``loader`` reads a packed output back as training batches.
"""

__version__ = "0.1.0"

from .errors import BestfitError, InputError, OptionError, OutputError  # noqa: E402
from .histogram import LengthHistogram, piece_counts  # noqa: E402
from .loader import PackedDataset, PackedLoader  # noqa: E402
from .pipeline import PackOptions, PackResult, pack  # noqa: E402
from .plan import CapacityPlan, Placement, assign_slots, plan_capacities, plan_pieces  # noqa: E402

__all__ = [
    "BestfitError", "CapacityPlan", "InputError", "LengthHistogram", "OptionError", "OutputError", "PackedDataset",
    "PackedLoader", "PackOptions",
    "PackResult", "Placement", "__version__", "assign_slots", "pack", "piece_counts", "plan_capacities",
    "plan_pieces",
]
