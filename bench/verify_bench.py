"""``bestfit verify`` against ``bestfit pack`` of the same inputs to the same output, interleaved."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .common import BESTFIT, dir_bytes, log, remove, save
from .timing import interleaved, summary

CTX = 2048
EOS = 100257


def main(folders: list[Path], scratch: Path, repeats: int = 3) -> dict[str, Any]:
    out = scratch / "verify-out"
    common = ["--ctx", str(CTX), "--eos-id", str(EOS)]
    contenders = {
        "pack": lambda: [*BESTFIT, "pack", *map(str, folders), str(out), *common, "--quiet", "--json", "--overwrite"],
        "verify": lambda: [*BESTFIT, "verify", *map(str, folders), str(out), "--json"],
    }
    load_before = os.getloadavg()
    runs = interleaved(contenders, repeats)
    report = json.loads(runs["verify"][-1].stdout)
    rows = {name: summary(r) for name, r in runs.items()}
    payload = {"input_bytes": sum(dir_bytes(f) for f in folders), "output_bytes": dir_bytes(out), "ctx": CTX,
               "repeats": repeats, "runs": rows, "verify_ok": report.get("ok"),
               "verify_over_pack": round(rows["verify"]["median_seconds"] / rows["pack"]["median_seconds"], 2),
               "verify_over_pack_cpu": round(rows["verify"]["median_cpu_seconds"]
                                             / rows["pack"]["median_cpu_seconds"], 2),
               "peak_verify_over_pack": round(rows["verify"]["peak_rss_mib"] / rows["pack"]["peak_rss_mib"], 2),
               "load_average": {"before": load_before, "after": os.getloadavg()}}
    log(f"verify {rows['verify']['median_seconds']}s vs pack {rows['pack']['median_seconds']}s: "
        f"{payload['verify_over_pack']}x (target 1.2x)")
    remove(out)
    save("verify", payload)
    return payload
