"""Report: the statistics of a packing run, mergeable across windows, as JSON and as a rich table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

STATS_SCHEMA = "bestfit.stats/1"


@dataclass(frozen=True)
class PackStats:
    """Counts of one window or a whole run; windows add up with ``+``."""

    documents: int = 0  # non-empty documents with at least one token packed
    empty_documents: int = 0
    tokens: int = 0  # tokens written, EOS included
    input_tokens: int = 0  # tokens read, before EOS and long-document handling
    eos_tokens: int = 0  # EOS tokens appended
    documents_ending_with_eos: int = 0  # non-empty documents whose last token already was --eos-id
    sequences: int = 0
    truncated_documents: int = 0
    truncations: int = 0
    dropped_documents: int = 0
    dropped_tokens: int = 0
    clipped_documents: int = 0
    windows: int = 0
    window_lower_bound: int = 0  # sum over windows of ceil(window tokens / ctx)

    def __add__(self, other: PackStats) -> PackStats:
        return PackStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Report:
    """What ``stats.json`` holds: the run's counts, derived ratios, and concatenation's counts for comparison."""

    ctx: int
    stats: PackStats
    concat_sequences: int
    concat_truncated_documents: int
    concat_truncations: int
    skipped_records: int = 0  # bad input records left out under --on-bad-record skip
    skipped_where: tuple[str, ...] = ()  # where the first few were (file:line or file row N)
    max_bad_records: str | None = None  # the limit skipping was held to (--max-bad-records), None without skip
    padded: bool = True  # False (--no-pad): rows end after their last piece and hold no padding

    @property
    def free_tokens(self) -> int:
        """Tokens the sequences leave free: what padding them to ctx takes."""
        return self.stats.sequences * self.ctx - self.stats.tokens

    @property
    def padding_tokens(self) -> int:
        """Padding written: the free tokens, or none when rows are unpadded."""
        return self.free_tokens if self.padded else 0

    @property
    def sequences_lower_bound(self) -> int:
        return -(-self.stats.tokens // self.ctx)

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        total = s.sequences * self.ctx
        bound = self.sequences_lower_bound
        return {
            "schema_version": STATS_SCHEMA,
            "ctx": self.ctx,
            "documents": s.documents,
            "empty_documents": s.empty_documents,
            "input_tokens": s.input_tokens,
            "eos_tokens": s.eos_tokens,
            "documents_ending_with_eos": s.documents_ending_with_eos,
            "tokens": s.tokens,
            "sequences": s.sequences,
            "padding_tokens": self.padding_tokens,
            "padding_fraction": self.padding_tokens / total if total else 0.0,
            "sequences_lower_bound": bound,
            "extra_sequences_fraction": (s.sequences - bound) / bound if bound else 0.0,
            "windows": s.windows,
            "windows_lower_bound": s.window_lower_bound,
            "truncated_documents": s.truncated_documents,
            "truncations": s.truncations,
            "dropped_documents": s.dropped_documents,
            "dropped_tokens": s.dropped_tokens,
            "clipped_documents": s.clipped_documents,
            "concat": {
                "sequences": self.concat_sequences,
                "truncated_documents": self.concat_truncated_documents,
                "truncations": self.concat_truncations,
            },
            "skipped_records": self.skipped_records,
            "skipped_first": list(self.skipped_where),
            "max_bad_records": self.max_bad_records,
        }


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def render_report(report: Report, title: str = "bestfit pack") -> Any:
    """A rich table of the report: best-fit against concatenation, row by row."""
    from rich.table import Table

    data = report.to_json()
    s = report.stats
    table = Table(title=f"{title} (ctx {report.ctx})", title_justify="left")
    table.add_column("")
    table.add_column("best-fit", justify="right")
    table.add_column("concat", justify="right")
    table.add_row("documents", f"{s.documents:,}", f"{s.documents:,}")
    table.add_row("tokens (incl. EOS)" if s.eos_tokens else "tokens", f"{s.tokens:,}", f"{s.tokens:,}")
    table.add_row("sequences", f"{s.sequences:,}", f"{report.concat_sequences:,}")
    table.add_row("  lower bound", f"{data['sequences_lower_bound']:,}", f"{data['sequences_lower_bound']:,}")
    concat_padding = report.concat_sequences * report.ctx - s.tokens
    table.add_row("padding" if report.padded else "free space (not written: --no-pad)",
                  _pct(report.free_tokens, s.sequences * report.ctx),
                  _pct(concat_padding, report.concat_sequences * report.ctx))
    table.add_row("truncated documents", f"{s.truncated_documents:,} ({_pct(s.truncated_documents, s.documents)})",
                  f"{report.concat_truncated_documents:,} ({_pct(report.concat_truncated_documents, s.documents)})")
    table.add_row("truncations", f"{s.truncations:,}", f"{report.concat_truncations:,}")
    if s.documents_ending_with_eos:
        table.add_row("documents already ending with EOS", f"{s.documents_ending_with_eos:,}", "")
    if s.clipped_documents:
        # A clipped document did not end where it was cut, so it gets no EOS (docs/usage.md, --long-docs).
        table.add_row("clipped to ctx (no EOS)", f"{s.clipped_documents:,} docs", "")
    if s.dropped_documents or s.dropped_tokens or s.empty_documents:
        table.add_row("dropped", f"{s.dropped_documents:,} docs, {s.dropped_tokens:,} tokens", "")
        table.add_row("empty documents skipped", f"{s.empty_documents:,}", "")
    if report.skipped_records:
        table.add_row("bad records skipped", f"{report.skipped_records:,}", "")
    return table


def stats_dict(stats: PackStats) -> dict[str, int]:
    return asdict(stats)
