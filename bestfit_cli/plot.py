"""Plot: truncations per document against document length, one line per strategy, one panel per ctx.

The figure of ``bestfit stats --plot``, after the paper's Figure 4. matplotlib is an optional extra
(``bestfit-cli[plot]``) and is imported only here, inside the function that draws.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import PurePath

from .errors import BestfitError, OptionError
from .stats import StatsResult, bucket_rows

PLOT_SUFFIXES = (".png", ".svg")
_STYLE = {"concat": ("#d62728", "o"), "bestfit": ("#1f77b4", "s"), "ffd": ("#2ca02c", "^"),
          "nextfit": ("#9467bd", "v"), "truncate": ("#7f7f7f", "x")}


def check_plot_target(path: str) -> None:
    """Fail before any reading when the figure could not be written: wrong type, no matplotlib, no folder."""
    if PurePath(path).suffix.lower() not in PLOT_SUFFIXES:
        raise OptionError(f"--plot {path}: unknown image type", fix="name the file *.png or *.svg")
    if importlib.util.find_spec("matplotlib") is None:
        raise BestfitError("--plot needs matplotlib", fix="pip install 'bestfit-cli[plot]'")
    folder = os.path.dirname(os.path.abspath(path))
    if "://" not in path and not os.path.isdir(folder):
        raise OptionError(f"--plot {path}: the folder {folder} does not exist", fix="create it, or choose another path")


def plot_truncations(result: StatsResult, path: str) -> None:
    """Write the figure to ``path`` (``.png`` or ``.svg``)."""
    check_plot_target(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctxs = sorted(set(result.options.ctx))
    fig, axes = plt.subplots(1, len(ctxs), figsize=(5.5 * len(ctxs), 4.2), squeeze=False, sharey=True)
    for ax, ctx in zip(axes[0], ctxs, strict=True):
        rows = [r for r in result.results if r.ctx == ctx]
        counts_ax = ax.twinx()
        counts_ax.set_zorder(0)
        ax.set_zorder(1)
        ax.patch.set_visible(False)
        buckets = bucket_rows(rows[0], result.n_buckets)
        used = [b for b in buckets if b["documents"]]
        edges = [b["min_length"] for b in used]
        counts_ax.bar(edges, [b["documents"] for b in used], width=[b["min_length"] for b in used], align="edge",
                      color="#bbbbbb", alpha=0.35, linewidth=0)
        counts_ax.set_ylabel("documents", color="#888888")
        counts_ax.tick_params(axis="y", colors="#888888")
        for r in rows:
            per_bucket = [b for b in bucket_rows(r, result.n_buckets) if b["documents"]]
            if r.strategy == "truncate":
                ys = [b["clipped_documents"] / b["documents"] for b in per_bucket]
                label = "truncate (clipped)"
            else:
                ys = [b["truncations_per_document"] for b in per_bucket]
                label = r.strategy + ("" if r.exact else " (estimated)")
            colour, marker = _STYLE[r.strategy]
            centres = [b["min_length"] * 1.414 for b in per_bucket]  # geometric middle of [2^k, 2^(k+1))
            ax.plot(centres, ys, marker=marker, color=colour, label=label, linewidth=1.5, markersize=4)
        ax.axvline(ctx, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xlabel("document length (tokens, EOS included)" if result.eos_id is not None
                      else "document length (tokens)")
        ax.set_title(f"ctx {ctx:,}")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("truncations per document")
    axes[0][0].legend(loc="upper left", fontsize="small")
    fig.suptitle(f"{result.documents:,} documents, {result.tokens:,} tokens", fontsize="medium")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise BestfitError(f"--plot {path}: cannot write ({exc})", fix="check the path") from None
    finally:
        plt.close(fig)
