"""bench_distributed: the bytes arithmetic by hand, and the published report's numbers follow
from its own measurements (the measured run itself starts three TF processes: too slow here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import bench_distributed as bench

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "distributed.json"


def test_gathered_bytes_by_hand() -> None:
    # R=2, B=4, D=2: forward (1/2)·4·(4·2 + 12) = 40 bytes; backward 2·(1/2)·4·4·2 = 32 bytes.
    assert bench.gathered_bytes(2, 4, 2) == 72.0
    assert bench.gathered_bytes(1, 512, 32) == 0.0  # one replica gathers nothing
    # Grows like (R-1)/R: 32 workers move 31/16 of what 2 do.
    assert bench.gathered_bytes(32, 512, 32) == pytest.approx(
        bench.gathered_bytes(2, 512, 32) * 31 / 16
    )


def test_projection_is_the_stated_arithmetic() -> None:
    settings = bench.DistributedBenchConfig(batch_size=1024, embedding_dim=64)
    rows = bench._projection(settings, one_step_s=0.1)
    for row in rows:
        wire = 8 * bench.gathered_bytes(row["replicas"], 1024, 64) / 25e9
        assert row["wire_s"] == pytest.approx(wire)
        assert row["share"] == pytest.approx(wire / (0.1 / row["replicas"] + wire))
    assert [r["replicas"] for r in rows] == list(settings.projected_workers)


def test_published_report_is_consistent() -> None:
    report = json.loads(REPORT.read_text())
    measured = report["measured"]
    two = measured["two_workers"]
    assert measured["gather_share_of_step"] == pytest.approx(
        1 - two["per_replica"]["step_s"] / two["gather"]["step_s"]
    )
    settings = report["settings"]
    for row in report["projection"]["rows"]:
        size = bench.gathered_bytes(
            row["replicas"], settings["batch_size"], settings["embedding_dim"]
        )
        assert row["bytes_per_replica_per_step"] == pytest.approx(size)
    assert report["load_average"]["start"]  # the load is reported beside the numbers
