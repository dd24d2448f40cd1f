"""``bestfit stats`` and ``bestfit histogram`` through the CLI: the paper's example, agreement with ``pack``, saved
histograms, options and configs, output streams, errors and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bestfit_cli.cli import cli
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file, read_lengths
from bestfit_cli.strategies import STRATEGIES

from .conftest import EOS, ROOT, SAMPLES

TOY = [14, 7, 5, 2, 3]
RESULT_KEYS = {"sequences", "sequences_lower_bound", "padding_tokens", "padding_fraction", "truncated_documents",
               "truncations", "dropped_tokens", "buckets", "ctx", "strategy", "exact"}


def run_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def stats_json(*args: object) -> dict[str, Any]:
    code, stdout, stderr = run_cli("stats", *args, "--json", "--quiet")
    assert code == 0, stderr
    return json.loads(stdout)


def by_key(report: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    return {(r["ctx"], r["strategy"]): r for r in report["results"]}


def write_jsonl(path: Path, lengths: list[int]) -> Path:
    path.write_text("".join(json.dumps({"input_ids": list(range(1, n + 1))}) + "\n" for n in lengths))
    return path


# ------------------------------------------------------------------------------------------------ golden


def test_toy_example_through_the_cli(tmp_path: Path) -> None:
    """The paper's example: ctx 8, documents of 14, 7, 5, 2 and 3 tokens in that order."""
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    code, stdout, stderr = run_cli("stats", source, "--ctx", 8, "--json")
    assert code == 0, stderr
    results = by_key(json.loads(stdout))
    assert {s for _, s in results} == set(STRATEGIES)
    concat, best = results[8, "concat"], results[8, "bestfit"]
    assert (concat["sequences"], concat["truncated_documents"], concat["truncations"]) == (4, 3, 3)
    assert (best["sequences"], best["truncated_documents"], best["truncations"]) == (4, 1, 1)
    assert best["vs_concat"]["truncated_documents"] == -2
    assert results[8, "nextfit"]["sequences"] == 5
    assert results[8, "truncate"]["dropped_tokens"] == 6
    assert "concat" in stderr and "bestfit" in stderr  # the table went to stderr, stdout is the JSON only


def test_json_document_shape(tmp_path: Path) -> None:
    report = stats_json(write_jsonl(tmp_path / "toy.jsonl", TOY), "--ctx", 8, "--ctx", 4, "--eos-id", 0)
    assert report["schema_version"] == "bestfit.compare/1"
    assert report["inputs"] == [{"path": str(tmp_path / "toy.jsonl"), "format": "jsonl", "documents": 5}]
    assert report["options"]["ctx"] == [8, 4] and report["options"]["eos_id"] == 0
    assert report["tokens"] == sum(TOY) + 5 and report["input_tokens"] == sum(TOY)
    assert [(r["ctx"], r["strategy"]) for r in report["results"]] == [
        (ctx, s) for ctx in (4, 8) for s in STRATEGIES]
    for r in report["results"]:
        assert RESULT_KEYS <= set(r)
        buckets = r["buckets"]
        assert buckets[0]["min_length"] == 1 and buckets[-1]["max_length"] >= max(15, 8)
        assert sum(b["documents"] for b in buckets) == 5
        assert sum(b["truncations"] for b in buckets) == r["truncations"]


def test_strategy_selection(tmp_path: Path) -> None:
    report = stats_json(write_jsonl(tmp_path / "toy.jsonl", TOY), "--ctx", 8, "--strategy", "bestfit",
                        "--strategy", "ffd")
    assert [r["strategy"] for r in report["results"]] == ["bestfit", "ffd"]
    assert "vs_concat" not in report["results"][0]


# ------------------------------------------------------------------------------------------------ same as pack


@pytest.mark.parametrize(("ctx", "long_docs", "window_tokens"), [
    (2048, "split", None), (1024, "split", 200_000), (8192, "truncate", None), (4096, "drop", 300_000)])
def test_bestfit_and_concat_equal_what_pack_reports(tmp_path: Path, ctx: int, long_docs: str,
                                                    window_tokens: int | None) -> None:
    window = ["--window-tokens", window_tokens] if window_tokens else []
    code, _, stderr = run_cli("pack", SAMPLES, tmp_path / "out", "--ctx", ctx, "--eos-id", EOS, "--long-docs",
                              long_docs, "--quiet", "--no-shuffle", *window)
    assert code == 0, stderr
    packed = json.loads((tmp_path / "out" / "stats.json").read_text())
    report = stats_json(SAMPLES, "--ctx", ctx, "--eos-id", EOS, "--long-docs", long_docs, *window)
    best, concat = by_key(report)[ctx, "bestfit"], by_key(report)[ctx, "concat"]
    for key in ("sequences", "sequences_lower_bound", "padding_tokens", "padding_fraction", "truncated_documents",
                "truncations", "dropped_tokens", "dropped_documents", "clipped_documents", "documents", "tokens"):
        assert best[key] == packed[key], key
    for key in ("sequences", "truncated_documents", "truncations"):
        assert concat[key] == packed["concat"][key], key
    if window_tokens:
        assert packed["windows"] > 1


def test_a_presets_memory_budget_gives_stats_the_windows_pack_plans(tmp_path: Path) -> None:
    """One-token documents, so pack's windows under --memory close on their document limit: stats must follow."""
    n_docs = 200_000
    source = tmp_path / "short.parquet"
    offsets = pa.array(np.arange(n_docs + 1, dtype=np.int32))
    pq.write_table(pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(np.ones(n_docs, np.int32)))}),
                   source)
    preset = tmp_path / "preset.toml"
    preset.write_text(f'ctx = 1000\neos_id = {EOS}\nmemory = "800MiB"\nrows_per_shard = 4096\n')
    code, _, stderr = run_cli("pack", source, tmp_path / "out", "--config", preset, "--quiet", "--no-shuffle")
    assert code == 0, stderr
    packed = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert packed["windows"] > 1
    best = by_key(stats_json(source, "--config", preset, "--strategy", "bestfit"))[1000, "bestfit"]
    assert best["sequences"] == packed["sequences"]
    whole = by_key(stats_json(source, "--ctx", 1000, "--eos-id", EOS, "--strategy", "bestfit",
                              "--window-tokens", 1 << 27))[1000, "bestfit"]
    assert whole["sequences"] < packed["sequences"]  # one window: what stats said before it read `memory`


# ------------------------------------------------------------------------------------------------ histograms


def test_histogram_round_trip_gives_the_order_free_strategies_exactly(tmp_path: Path) -> None:
    hist_path = tmp_path / "hist.json"
    code, _, stderr = run_cli("histogram", SAMPLES, "-o", hist_path, "--eos-id", EOS)
    assert code == 0, stderr
    saved = json.loads(hist_path.read_text())
    assert saved["schema"] == "bestfit.histogram/1" and saved["options"]["eos_id"] == EOS
    assert saved["documents"] == 850 and sum(saved["counts"]) == 850
    direct = by_key(stats_json(SAMPLES, "--ctx", 2048, "--ctx", 8192, "--eos-id", EOS))
    from_hist = by_key(stats_json(hist_path, "--ctx", 2048, "--ctx", 8192))  # EOS recorded in the histogram
    for ctx in (2048, 8192):
        for strategy in ("bestfit", "ffd", "truncate"):
            a, b = direct[ctx, strategy], from_hist[ctx, strategy]
            a.pop("vs_concat"), b.pop("vs_concat")  # concat itself is only estimated from a histogram
            assert a == b, strategy
        concat = from_hist[ctx, "concat"]
        assert not concat["exact"] and "random order" in concat["method"]
        assert concat["sequences"] == direct[ctx, "concat"]["sequences"]
        assert concat["truncations"] == pytest.approx(direct[ctx, "concat"]["truncations"], rel=0.15)
        nextfit = from_hist[ctx, "nextfit"]
        assert not nextfit["exact"] and nextfit["truncations"] == direct[ctx, "nextfit"]["truncations"]


def test_histograms_of_separate_shards_merge(tmp_path: Path) -> None:
    parts = []
    for name in ("code.parquet", "nl.jsonl"):
        out = tmp_path / f"{name}.hist.json"
        assert run_cli("histogram", SAMPLES / name, "-o", out)[0] == 0
        parts.append(out)
    merged = by_key(stats_json(*parts, "--ctx", 2048))
    whole = by_key(stats_json(SAMPLES, "--ctx", 2048))
    for strategy in ("bestfit", "ffd"):
        merged[2048, strategy].pop("vs_concat"), whole[2048, strategy].pop("vs_concat")
        assert merged[2048, strategy] == whole[2048, strategy]


def test_histogram_to_stdout_and_a_pack_stats_json_is_refused_cleanly(tmp_path: Path) -> None:
    code, stdout, _ = run_cli("histogram", write_jsonl(tmp_path / "toy.jsonl", TOY))
    assert code == 0 and json.loads(stdout)["lengths"] == sorted(TOY)
    other = tmp_path / "stats.json"
    other.write_text(json.dumps({"schema_version": "bestfit.stats/1", "ctx": 8}, indent=2))
    code, _, stderr = run_cli("stats", other, "--ctx", 8)
    assert code == 1
    assert "stats.json: holds one JSON document" in stderr and "Traceback" not in stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "bestfit.histogram/1", "lengths": [3, 2], "counts": [1, 1]}')
    code, _, stderr = run_cli("stats", broken, "--ctx", 8)
    assert code == 1 and "not a valid bestfit length histogram" in stderr


def test_bestfit_from_a_histogram_larger_than_a_window_is_marked_estimated(tmp_path: Path) -> None:
    hist_path = tmp_path / "hist.json"
    assert run_cli("histogram", SAMPLES, "-o", hist_path)[0] == 0
    one_window = by_key(stats_json(hist_path, "--ctx", 2048))[2048, "bestfit"]
    windowed = by_key(stats_json(hist_path, "--ctx", 2048, "--window-tokens", 100_000))[2048, "bestfit"]
    assert one_window["exact"] and not windowed["exact"] and "windows" in windowed["method"]


def test_histograms_with_different_eos_settings_need_an_explicit_eos(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    assert run_cli("histogram", source, "-o", tmp_path / "a.json", "--eos-id", 1)[0] == 0
    assert run_cli("histogram", source, "-o", tmp_path / "b.json")[0] == 0
    code, _, stderr = run_cli("stats", tmp_path / "a.json", tmp_path / "b.json", "--ctx", 8)
    assert code == 2 and "--eos-id" in stderr
    report = stats_json(tmp_path / "a.json", tmp_path / "b.json", "--ctx", 8, "--eos-id", 5)
    assert report["tokens"] == 2 * (sum(TOY) + 5)


# ------------------------------------------------------------------------------------------------ options


def test_config_ctx_is_a_default_and_the_flag_replaces_it(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    config = ROOT / "configs" / "cl100k-2k.toml"
    assert stats_json(source, "--config", config)["options"]["ctx"] == [2048]
    report = stats_json(source, "--config", config, "--ctx", 8192)
    assert report["options"]["ctx"] == [8192] and report["options"]["eos_id"] == EOS
    several = tmp_path / "several.toml"
    several.write_text("[stats]\nctx = [8, 16]\n")
    assert stats_json(source, "--config", several)["options"]["ctx"] == [8, 16]


def test_usage_errors(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    assert run_cli("stats", source)[0] == 2  # no --ctx
    assert run_cli("stats", source, "--ctx", 8, "--strategy", "magic")[0] == 2
    code, _, stderr = run_cli("stats", source, "--ctx", 8, "--plot", tmp_path / "fig.pdf")
    assert code == 2 and "*.png or *.svg" in stderr


def test_bad_input_names_the_file_and_row(tmp_path: Path) -> None:
    table = pa.table({"input_ids": pa.array([[1, 2], None, [3]], type=pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "nulls.parquet")
    code, _, stderr = run_cli("stats", tmp_path / "nulls.parquet", "--ctx", 8)
    assert code == 1 and "nulls.parquet row 1" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli("stats", tmp_path / "nulls.parquet", "--ctx", 8, "--column", "ids")
    assert code == 1 and "no column 'ids'" in stderr


def test_bad_records_stop_the_run_or_are_skipped_and_counted(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"input_ids": [1, 2, 3]}\nnot json\n{"input_ids": [4, 5]}\n')
    code, _, stderr = run_cli("stats", source, "--ctx", 4)
    assert code == 1 and "bad.jsonl:2: not valid JSON" in stderr
    report = stats_json(source, "--ctx", 4, "--on-bad-record", "skip", "--max-bad-records", 1)
    assert report["documents"] == 2 and report["inputs"][0]["skipped_records"] == 1
    assert report["options"]["on_bad_record"] == "skip"


def test_lengths_only_reader_agrees_with_the_full_reader() -> None:
    for index, file in enumerate(resolve_inputs([str(SAMPLES)])):
        fast = np.concatenate([b.lengths for b in read_lengths(file, index, ReadOptions())])
        full = np.concatenate([b.lengths for b in read_file(file, index, ReadOptions())])
        assert np.array_equal(fast, full)


# ------------------------------------------------------------------------------------------------ plot, pipes


def test_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for name in ("fig.png", "fig.svg"):
        code, _, stderr = run_cli("stats", SAMPLES, "--ctx", 2048, "--ctx", 8192, "--plot", tmp_path / name, "-q")
        assert code == 0, stderr
        assert (tmp_path / name).stat().st_size > 1000


def test_plot_without_matplotlib_says_which_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, stderr = run_cli("stats", write_jsonl(tmp_path / "toy.jsonl", TOY), "--ctx", 8, "--plot",
                              tmp_path / "fig.png")
    assert code == 1 and "pip install 'bestfit-cli[plot]'" in stderr


def test_json_in_a_real_pipe(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "bestfit"), "stats", str(source), "--ctx", "8", "--json"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["strategy"] == "concat"
    assert "bestfit" in done.stderr  # the table goes to stderr when --json holds stdout


@pytest.mark.parametrize(("ids", "dtype", "message"), [
    ([[1, 2, 3], [4, -5, 6, 7, 8]], "int32", "row 1: negative token id -5"),
    ([[1, 2, 3], [70_000, 1]], "uint16", "row 1: token id 70000"),
])
def test_stats_refuses_and_skips_the_ids_pack_refuses_and_skips(tmp_path: Path, ids: list[list[int]], dtype: str,
                                                                message: str) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.int64()))}), path)
    code, stdout, stderr = run_cli("stats", path, "--ctx", 8, "--dtype", dtype)
    assert code == 1 and message in stderr and "Traceback" not in stderr
    packed = tmp_path / "out"
    code, _, stderr = run_cli("pack", path, packed, "--ctx", 8, "--dtype", dtype, "--on-bad-record", "skip",
                                   "--max-bad-records", 1, "-q")
    assert code == 0, stderr
    pack_stats = json.loads((packed / "stats.json").read_text())
    report = stats_json(path, "--ctx", 8, "--dtype", dtype, "--on-bad-record", "skip",
                        "--max-bad-records", 1, "--strategy", "bestfit")
    assert (report["documents"], report["empty_documents"]) == (pack_stats["documents"], 0)
    assert report["results"][0]["sequences"] == pack_stats["sequences"]
    assert report["inputs"][0]["skipped_records"] == pack_stats["skipped_records"] == 1


def test_plot_path_is_checked_before_reading(tmp_path: Path) -> None:
    # The input does not exist either: the plot's folder is the first thing reported, before any reading.
    code, stdout, stderr = run_cli("stats", tmp_path / "nope.parquet", "--ctx", 8, "--plot", tmp_path / "no" / "x.png")
    assert code == 2 and stdout == ""
    assert "does not exist" in stderr and "x.png" in stderr and "nope.parquet" not in stderr


def test_histogram_checks_ids_against_dtype_as_pack_does(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2], [70_000]], type=pa.list_(pa.int64()))}), path)
    code, _, stderr = run_cli("histogram", path, "-o", tmp_path / "h.json", "--dtype", "uint16")
    assert code == 1 and "row 1: token id 70000" in stderr and not (tmp_path / "h.json").exists()
    code, _, stderr = run_cli("histogram", path, "-o", tmp_path / "h.json", "--dtype", "uint16",
                              "--on-bad-record", "skip", "--max-bad-records", 1)
    assert code == 0, stderr
    saved = json.loads((tmp_path / "h.json").read_text())
    assert saved["options"]["dtype"] == "uint16" and saved["inputs"][0]["skipped_records"] == 1
