"""The benchmark harness: alternation order, ratio statistics, options <-> argparse, atomic JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Literal
from unittest import mock

import numpy as np
import pytest

from pipelines import harness


def _counting_steps(names: str) -> tuple[dict, list[str]]:
    calls: list[str] = []
    return {name: (lambda name=name: calls.append(name)) for name in names}, calls


def test_rounds_rotate_the_order() -> None:
    steps, calls = _counting_steps("abc")
    timings = harness.time_round_robin(steps, repeats=4, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up: each step twice, in order
    # Round r starts at step r mod 3: abc, bca, cab, abc.
    assert timings.calls == list("abcbcacababc") == calls[6:]
    assert timings.rounds["b"] == [0, 1, 2, 3]


def test_fewer_repeats_are_spread_over_the_rounds() -> None:
    steps, _ = _counting_steps("ab")
    timings = harness.time_round_robin(steps, repeats={"a": 6, "b": 2})
    assert timings.rounds["a"] == [0, 1, 2, 3, 4, 5] and timings.rounds["b"] == [0, 3]
    assert harness.time_round_robin(steps, repeats={"a": 9, "b": 3}).rounds["b"] == [0, 3, 6]
    summary = timings.summary("b", samples=True)
    assert summary["repeats"] == 2 and len(summary["wall_ms"]) == len(summary["cpu_ms"]) == 2
    assert summary["min_ms"] <= summary["q1_ms"] <= summary["median_ms"] <= summary["q3_ms"]
    ends: list[int] = []
    harness.time_round_robin(steps, repeats=3, on_round_end=ends.append)
    assert ends == [0, 1, 2]


def test_wall_and_cpu_time_of_a_busy_and_a_sleeping_step() -> None:
    def busy() -> None:
        end = harness.time.process_time() + 0.02
        while harness.time.process_time() < end:
            pass

    timings = harness.time_round_robin(
        {"busy": busy, "sleep": lambda: harness.time.sleep(0.02)}, repeats=3
    )
    s = timings.summaries()
    assert s["busy"]["cpu_median_ms"] >= 19 and s["sleep"]["cpu_median_ms"] < 10
    assert s["sleep"]["median_ms"] >= 19


def test_a_failing_step_is_recorded_and_the_others_timed() -> None:
    def fail() -> None:
        raise RuntimeError("out of memory\nsecond line")

    steps = {"ok": lambda: None, "bad": fail}
    timings = harness.time_round_robin(steps, repeats=2, errors=(RuntimeError,))
    assert timings.summary("bad") == {"error": "RuntimeError: out of memory"}
    assert timings.summary("ok")["repeats"] == 2 and list(timings.summaries()) == ["ok", "bad"]
    with pytest.raises(RuntimeError):
        harness.time_round_robin(steps, repeats=2)


def test_ratios_and_their_standard_error_from_known_samples() -> None:
    timings = harness.Timings(
        wall_ms={"a": [2.0, 4.0, 6.0, 9.0], "b": [1.0, 2.0, 2.0, 3.0]},
        cpu_ms={"a": [1.0, 1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0, 2.0]},
        rounds={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]},
        first_call_ms={"a": 1.0, "b": 1.0},
        errors={},
        calls=[],
    )
    ratio = timings.ratio("a", "b")
    assert ratio["per_round"] == [2.0, 2.0, 3.0, 3.0]
    assert ratio["mean"] == 2.5 and ratio["median"] == 2.5 and ratio["n"] == 4
    # Sample standard deviation of (2, 2, 3, 3): sqrt(1 / 3); SE = that / sqrt(4).
    assert ratio["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert ratio["of_medians"] == pytest.approx(5.0 / 2.0)
    assert timings.ratio("a", "b", cpu=True)["per_round"] == [0.5] * 4
    # Only rounds where both ran count.
    timings.rounds["b"] = [0, 2, 4, 6]
    assert timings.ratio("a", "b")["per_round"] == [2.0 / 1.0, 6.0 / 2.0]
    assert harness.ratio_stats([1.5]) == {"mean": 1.5, "se": None, "median": 1.5, "n": 1}


@dataclasses.dataclass(frozen=True)
class _Options:
    """Options of a test benchmark.

    Attributes:
        sizes: numbers of classes N,
            as many as you like.
        embedding_dim: D.
        names: which variants.
        metric: the score.
        rate: a float.
        seed: the seed.
        plot: draw it.
        extra: not on the command line.
    """

    sizes: tuple[int, ...] = (10_000, 100_000)
    embedding_dim: int = dataclasses.field(default=64, metadata={"flag": "--dim", "min": 1})
    names: tuple[str, ...] = ("a", "b")
    metric: Literal["cosine", "dot"] = "cosine"
    rate: float = 0.5
    seed: int | None = None
    plot: bool = True
    extra: dict = dataclasses.field(default_factory=dict)


def test_options_round_trip_through_the_command_line() -> None:
    quick = _Options(sizes=(10,), embedding_dim=4)

    def parse(*argv: str) -> tuple[_Options, object]:
        return harness.parse_options(_Options, argv, prog="t", output="out.json", quick=quick)

    assert parse()[0] == _Options()
    argv = ["--sizes", "1e3,20", "--dim", "8", "--names", "x", "--metric", "dot", "--rate",
            "0.25", "--seed", "3", "--no-plot", "--output", "o.json"]  # fmt: skip
    options, args = parse(*argv)
    assert options == _Options((1000, 20), 8, ("x",), "dot", 0.25, 3, False)
    assert str(args.output) == "o.json"
    assert parse("--quick")[0] == quick
    assert parse("--quick", "--dim", "16")[0] == dataclasses.replace(quick, embedding_dim=16)
    # Every option given back as flags parses into the same options.
    argv = ["--sizes", "7,8", "--dim", "2", "--names", "p,q", "--metric", "cosine", "--rate",
            "1.5", "--seed", "0", "--plot"]  # fmt: skip
    assert parse(*argv)[0] == _Options((7, 8), 2, ("p", "q"), "cosine", 1.5, 0, True)
    for bad in (["--dim", "0"], ["--sizes", "0"], ["--sizes", "x"], ["--metric", "l2"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_help_comes_from_the_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.option_help(_Options)["sizes"] == "numbers of classes N, as many as you like."
    with pytest.raises(SystemExit):
        harness.parse_options(_Options, ["--help"], prog="t")
    out = capsys.readouterr().out
    assert "--dim DIM" in out and "D. (default: 64)" in out and "--extra" not in out


def test_integers() -> None:
    assert harness.integer("1e5") == 100_000 and harness.integer("-3") == -3
    for bad in ("1.5", "x", "inf"):
        with pytest.raises(Exception, match="integer"):
            harness.integer(bad)
    int_list = harness._argument(tuple[int, ...])["type"]
    assert int_list("1e4, 100000") == (10_000, 100_000)
    with pytest.raises(Exception, match="positive"):
        int_list("0")


def test_json_is_written_atomically(tmp_path) -> None:
    path = tmp_path / "sub" / "report.json"
    harness.write_json(path, {"a": np.float32(1.5), "b": np.arange(2), "c": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1], "c": str(tmp_path)}
    assert path.stat().st_mode & 0o777 == 0o644
    # A failure while writing leaves the old file whole and no temporary file behind.
    with mock.patch.object(harness._io.os, "replace", side_effect=OSError("disk full")):
        with pytest.raises(OSError):
            harness.write_json(path, {"a": 2})
    assert json.loads(path.read_text())["a"] == 1.5
    with pytest.raises(TypeError):
        harness.write_json(path, {"a": object()})
    assert os.listdir(path.parent) == ["report.json"]


def test_report_facts() -> None:
    bench = harness.Benchmark("pipelines.x", _Options(), schema_version=3, argv=["--quick"])
    report = bench.report(points=[1])
    assert report["schema_version"] == 3 and report["command"] == "python -m pipelines.x --quick"
    assert report["settings"]["sizes"] == (10_000, 100_000) and report["points"] == [1]
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["memory_bytes"] > 0 and machine["numpy"]
    assert len(report["load_average"]["start"]) in (0, 3) and report["peak_rss_mb"] > 0
    assert harness.peak_rss_bytes() >= harness.rss_bytes() > 0
    assert 0 < harness.available_memory_bytes() <= machine["memory_bytes"]


def test_markdown_table() -> None:
    table = harness.markdown_table(["name", "ms", "n"], [["a", 1.23456, 3], ["b", 1234.5, 10]])
    assert table.splitlines() == [
        "| name | ms | n |",
        "|---|---:|---:|",
        "| a | 1.23 | 3 |",
        "| b | 1,234 | 10 |",
    ]
    assert harness.markdown_table(["x"], [[0.012345], [math.nan]]).splitlines()[2:] == [
        "| 0.0123 |", "| skipped |"]  # fmt: skip


def test_help_of_a_one_line_attributes_docstring() -> None:
    class Options:
        """Attributes:
        sizes: numbers of classes N.
        repeats: timed calls
            per variant.
        """

    assert harness.option_help(Options) == {
        "sizes": "numbers of classes N.",
        "repeats": "timed calls per variant.",
    }


def test_fit_timer_records_epochs_or_batches() -> None:
    import tensorflow as tf

    import recsampled.layers  # noqa: F401  (tf.keras is tf-keras from here on)

    model = tf.keras.Sequential([tf.keras.Input([2]), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros([12, 2], np.float32), np.zeros([12, 1], np.float32)
    epochs, batches = harness.fit_timer("epoch"), harness.fit_timer("batch")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[epochs, batches])
    assert len(epochs.seconds) == 2 and len(batches.seconds) == 6
    assert all(s > 0 for s in epochs.seconds + batches.seconds)
    with pytest.raises(ValueError, match="unit"):
        harness.fit_timer("step")


def test_log_uniform_ids_follow_the_log_uniform_law() -> None:
    from scipy import stats

    ids = harness.log_uniform_ids(20, (40_000,), np.random.default_rng(0))
    k = np.arange(20)
    expected = np.log((k + 2) / (k + 1)) / np.log(21) * ids.size
    observed = np.bincount(ids, minlength=20)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() <= 19
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    counts = harness.zipf_counts(50, 1.1, np.random.default_rng(0))
    assert sorted(counts, reverse=True)[0] == 1e9 and counts.min() >= 1


@dataclasses.dataclass(frozen=True)
class _Commented:
    """Options documented by ``#:`` comments."""

    size: int = 3  #: items per call.
    #: a long help text that would not fit
    seed: int = dataclasses.field(default=0, metadata={"min": 0})
    plain: int = 1  # an ordinary comment, not help


def test_help_comes_from_field_comments() -> None:
    helps = harness.option_help(_Commented)
    assert helps == {"size": "items per call.", "seed": "a long help text that would not fit"}
