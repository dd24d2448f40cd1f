"""What windows cost in packing quality: sequences of the windowed plan against the global lower bound.

Runs ``pack`` over the shared corpora (or synthetic data when they are absent) at several ``--window-tokens``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bestfit_cli.pipeline import PackOptions, pack

from .common import SHARED_CORPORA, log, save
from .corpus import build

EOS = 100257
WINDOWS = [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 27]


def main(scratch: Path, ctxs: list[int]) -> dict[str, Any]:
    if (SHARED_CORPORA / "code").is_dir():
        inputs, source = [str(SHARED_CORPORA / "code"), str(SHARED_CORPORA / "nl")], "../shared/corpora code + nl"
    else:
        inputs, source = [str(p) for p in build(scratch / "quality", 1)], "synthetic"
    rows = []
    for ctx in ctxs:
        for window_tokens in WINDOWS:
            with tempfile.TemporaryDirectory(dir=scratch) as out:
                report = pack(inputs, out, PackOptions(ctx=ctx, eos_id=EOS, window_tokens=window_tokens)).report
            data = report.to_json()
            rows.append({"ctx": ctx, "window_tokens": window_tokens, "windows": data["windows"],
                         "sequences": data["sequences"], "sequences_lower_bound": data["sequences_lower_bound"],
                         "windows_lower_bound": data["windows_lower_bound"],
                         "extra_sequences": data["sequences"] - data["sequences_lower_bound"],
                         "extra_sequences_fraction": data["extra_sequences_fraction"],
                         "tokens": data["tokens"]})
            log(f"ctx {ctx} window {window_tokens:,}: {data['windows']} windows, {data['sequences']:,} sequences, "
                f"{100 * data['extra_sequences_fraction']:.4f} % over the lower bound")
    payload = {"source": source, "rows": rows}
    save("window_quality", payload)
    return payload
