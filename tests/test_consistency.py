"""Small things a careful user trips over (issue 13): labels that are true, commands that agree with each other,
and a Python API that checks its arguments like the CLI does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bestfit_cli import OptionError, PackOptions, pack
from bestfit_cli.report import render_report
from bestfit_cli.stats import StatsOptions, percent_change, run_stats

from .conftest import SAMPLES
from .test_stats import TOY, run_cli, stats_json, write_jsonl


def rendered(table: object) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


@pytest.mark.parametrize(("value", "reference", "shown"), [
    (997, 1000, "-0.3%"), (1_000_041, 1_000_000, "+0.0041%"), (95, 100, "-5.0%"), (112, 100, "+12%"),
    (100, 100, "0%"), (10**9 + 1, 10**9, "+<0.0001%")])
def test_a_small_change_never_shows_as_zero(value: int, reference: int, shown: str) -> None:
    assert percent_change(value, reference) == shown


def test_pack_report_says_eos_only_with_an_eos_and_counts_clipped_documents(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    plain = pack(source, str(tmp_path / "a"), PackOptions(ctx=8)).report
    text = rendered(render_report(plain))
    assert "EOS" not in text and "tokens" in text
    with_eos = pack(source, str(tmp_path / "b"), PackOptions(ctx=8, eos_id=0)).report
    assert "tokens (incl. EOS)" in rendered(render_report(with_eos))
    clipped = pack(source, str(tmp_path / "c"), PackOptions(ctx=8, long_docs="truncate")).report
    assert clipped.stats.clipped_documents == 1
    assert "clipped to ctx (no EOS)" in rendered(render_report(clipped))


def test_plot_axis_mentions_eos_only_with_an_eos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from bestfit_cli.plot import plot_truncations

    figures: list[object] = []
    monkeypatch.setattr(plt, "close", figures.append)
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    for eos_id in (None, 0):
        result = run_stats([str(source)], StatsOptions(ctx=(8,), eos_id=eos_id))
        plot_truncations(result, str(tmp_path / f"plot-{eos_id}.png"))
    labels = [fig.axes[0].get_xlabel() for fig in figures]  # type: ignore[attr-defined]
    assert labels == ["document length (tokens)", "document length (tokens, EOS included)"]


def test_histogram_refuses_an_eos_its_dtype_cannot_hold_as_pack_and_stats_do(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    for command in (["histogram", source], ["stats", source, "--ctx", 8], ["pack", source, tmp_path / "o", "--ctx", 8]):
        code, _, stderr = run_cli(*command, "--dtype", "uint16", "--eos-id", 100257)
        assert code == 2, (command, stderr)
        assert "--eos-id 100257 does not fit the token dtype uint16" in stderr


def test_stats_on_only_empty_documents_fails_as_pack_does(tmp_path: Path) -> None:
    source = tmp_path / "empty-docs.jsonl"
    source.write_text('{"input_ids": []}\n{"input_ids": []}\n')
    for command in (["stats", source, "--ctx", 8], ["pack", source, tmp_path / "o", "--ctx", 8]):
        code, _, stderr = run_cli(*command)
        assert code == 1, (command, stderr)
        assert "input holds no documents with tokens (2 records read)" in stderr


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["counts"].__setitem__(0, 1.5), "'counts' must be a list of integers"),
    (lambda d: d["lengths"].__setitem__(0, True), "'lengths' must be a list of integers"),
    (lambda d: d.__setitem__("documents", d["documents"] + 1), "'documents' is"),
    (lambda d: d.__setitem__("tokens", d["tokens"] - 1), "'tokens' is"),
    (lambda d: d["counts"].pop(), "entries"),
])
def test_a_histogram_with_wrong_numbers_is_refused(tmp_path: Path, edit: object, message: str) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    assert run_cli("histogram", source, "-o", tmp_path / "h.json")[0] == 0
    document = json.loads((tmp_path / "h.json").read_text())
    edit(document)  # type: ignore[operator]
    (tmp_path / "h.json").write_text(json.dumps(document))
    code, _, stderr = run_cli("stats", tmp_path / "h.json", "--ctx", 8)
    assert code == 1 and message in stderr and "not a valid bestfit length histogram" in stderr


def test_a_histogram_recorded_with_eos_mixes_with_token_files(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "toy.jsonl", TOY)
    assert run_cli("histogram", source, "-o", tmp_path / "h.json", "--eos-id", 1)[0] == 0
    # Token files record no EOS setting, so they do not disagree with the histogram's.
    report = stats_json(tmp_path / "h.json", source, "--ctx", 8)
    assert report["options"]["eos_id"] == 1
    assert report["tokens"] == 2 * (sum(TOY) + len(TOY))
    assert stats_json(tmp_path / "h.json", source, "--ctx", 8, "--eos-id", 1)["tokens"] == report["tokens"]


def test_the_python_api_takes_one_path_as_one_input(tmp_path: Path) -> None:
    one = pack(str(SAMPLES / "nl.jsonl"), str(tmp_path / "a"), PackOptions(ctx=64))
    as_list = pack([str(SAMPLES / "nl.jsonl")], str(tmp_path / "b"), PackOptions(ctx=64))
    assert one.report == as_list.report and one.report.stats.documents == 250
    assert pack(SAMPLES, str(tmp_path / "c"), PackOptions(ctx=64)).report.stats.documents > 250
    assert run_stats(str(SAMPLES / "nl.jsonl"), StatsOptions(ctx=(64,))).documents == 250


@pytest.mark.parametrize(("options", "message"), [
    ({"ctx": 16.5}, "--ctx 16.5 is not an integer"), ({"ctx": True}, "--ctx True is not an integer"),
    ({"ctx": 64, "eos_id": True}, "--eos-id True is not an integer"),
    ({"ctx": 64, "seed": 1.5}, "--seed 1.5 is not an integer"),
    ({"ctx": 64, "shuffle": "no"}, "--shuffle 'no' is not true or false"),
    ({"ctx": 64, "column": 3}, "--column 3 is not a string"),
])
def test_the_python_api_refuses_wrong_types_as_usage_errors(tmp_path: Path, options: dict[str, object],
                                                            message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("?", r"\?")) as caught:
        pack(str(SAMPLES / "nl.jsonl"), str(tmp_path / "o"), PackOptions(**options))  # type: ignore[arg-type]
    assert caught.value.exit_code == 2
    assert not (tmp_path / "o").exists()
    with pytest.raises(OptionError, match="--ctx 2.5 is not an integer"):
        run_stats(str(SAMPLES / "nl.jsonl"), StatsOptions(ctx=(2.5,)))  # type: ignore[arg-type]
