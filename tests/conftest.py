from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from .s3_server import s3, s3_server  # noqa: F401  (fixtures for every module: a real S3 server on loopback)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared" / "corpora"
EOS = 100257

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def shared_corpora() -> Path:
    if not (SHARED / "code").is_dir():
        pytest.skip("../shared/corpora is not present")
    return SHARED


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (pyproject's addopts) every test of an ``xdist_group`` runs on one worker: xdist
    appends ``@group`` to its node id, and schedules by it. When that fails to take (pytest 9.2 ignores it,
    pytest-dev/pytest-xdist#1386) the tests are spread as if ungrouped, and tests/test_ray.py starts one Ray cluster
    per worker, which slows the whole suite on 2 cores: refuse the run instead."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup did not group {len(lost)} tests (e.g. {lost[0]}): "
                                "this pytest-xdist does not work with this pytest; install pytest<9.2 (make install)")


def record_decode_threads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each Parquet read's ``use_threads`` from here on: whether pyarrow's threads decode it (True) or the thread
    reading it does (False)."""
    from bestfit_cli.formats import parquet as parquet_format

    seen: list[bool] = []
    real = parquet_format._record_batches

    def recording(file, column, batch_rows, carried=(), decode_threads=True):  # type: ignore[no-untyped-def]
        seen.append(decode_threads)
        return real(file, column, batch_rows, carried, decode_threads)

    monkeypatch.setattr(parquet_format, "_record_batches", recording)
    return seen
