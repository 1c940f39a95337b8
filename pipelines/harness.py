"""The benchmark harness shared by every benchmark in ``pipelines/``.

- :func:`time_round_robin`: the variants of a comparison are called one at a time, round after
  round, in an order rotated every round, so that load from other processes hits all alike; each
  call is timed in wall-clock and process CPU time; :meth:`Timings.ratio` gives per-round ratios
  with their mean and standard error (a change of load between rounds cancels in them).
- :class:`Benchmark`: machine facts (``psutil``), library versions, load average at start and end,
  peak RSS and wall time around every report.
- Reports: atomic JSON (:func:`write_json`), Markdown tables, plots.
- :func:`parse_options`: one frozen options dataclass per benchmark becomes its parser (help from
  each field's ``#:`` comment; ``tuple[int, ...]`` takes ``1e4,100000``; ``--quick`` preset).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import logging
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil

from recsampled import _io

LOG = logging.getLogger("pipelines")
T = TypeVar("T")


@dataclasses.dataclass
class Timings:
    """The samples of one :func:`time_round_robin` run: per step name, the wall and process CPU
    milliseconds and the round of each timed call, the first (tracing) call, the error of a step
    that failed while warming up; and the names of the timed calls in the order they ran."""

    wall_ms: dict[str, list[float]]
    cpu_ms: dict[str, list[float]]
    rounds: dict[str, list[int]]
    first_call_ms: dict[str, float]
    errors: dict[str, str]
    calls: list[str]

    def summary(self, name: str, *, samples: bool = False) -> dict[str, Any]:
        """Median, quartiles, min, CPU median, repeats and first call of ``name`` (plus the
        samples with ``samples``), or ``{"error": message}``."""
        if name in self.errors:
            return {"error": self.errors[name]}
        wall, cpu = self.wall_ms[name], self.cpu_ms[name]
        q1, q3 = np.percentile(wall, [25, 75]).tolist()  # = statistics' "inclusive" quartiles
        out = {"median_ms": statistics.median(wall), "q1_ms": q1, "q3_ms": q3, "min_ms": min(wall),
               "cpu_median_ms": statistics.median(cpu), "repeats": len(wall),
               "first_call_ms": self.first_call_ms[name]}  # fmt: skip
        return out | ({"wall_ms": list(wall), "cpu_ms": list(cpu)} if samples else {})

    def summaries(self, *, samples: bool = False) -> dict[str, dict[str, Any]]:
        """:meth:`summary` of every step, in the order the steps were given."""
        return {name: self.summary(name, samples=samples) for name in self.first_call_ms}

    def ratio(self, numerator: str, denominator: str, *, cpu: bool = False) -> dict[str, Any]:
        """``numerator / denominator`` per round where both ran, :func:`ratio_stats` of those,
        and the ratio of the medians (``of_medians``)."""
        times = self.cpu_ms if cpu else self.wall_ms
        a, b = (dict(zip(self.rounds[n], times[n], strict=True)) for n in (numerator, denominator))
        per_round = [a[r] / b[r] for r in sorted(set(a) & set(b))]
        of_medians = statistics.median(times[numerator]) / statistics.median(times[denominator])
        return {"of_medians": of_medians, "per_round": per_round, **ratio_stats(per_round)}


def ratio_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """``mean``, ``se`` (sample std / sqrt(n); None below two values), ``median`` and ``n``."""
    n = len(values)
    if n == 0:
        return {"mean": None, "se": None, "median": None, "n": 0}
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"mean": statistics.fmean(values), "se": se, "median": statistics.median(values), "n": n}


def time_round_robin(steps: Mapping[str, Callable[[], object]], *, repeats: int | Mapping[str, int],
                     warmup: int | Mapping[str, int] = 1,
                     errors: tuple[type[BaseException], ...] = (),
                     on_round_end: Callable[[int], None] | None = None,
                     desc: str | None = None) -> Timings:  # fmt: skip
    """Times each step (name -> function of no arguments) call by call, round by round.

    Every step is first called ``warmup`` times (the first is ``first_call_ms``); then
    ``max(repeats)`` rounds call every step due that round once, in the given order rotated by one
    place per round; fewer repeats (``repeats`` and ``warmup`` may be name -> count) are spread
    evenly over the rounds. A step raising one of ``errors`` while warming up is recorded in
    ``Timings.errors``; ``on_round_end(r)`` runs after each round; ``desc`` labels a tqdm bar.
    """
    from tqdm.auto import tqdm

    repeats_, warmup_ = (
        {n: v if isinstance(v, int) else v[n] for n in steps} for v in (repeats, warmup)
    )
    first_call, failed = {}, {}
    for name, step in steps.items():
        try:
            start = time.perf_counter()
            step()
            first_call[name] = (time.perf_counter() - start) * 1e3
            for _ in range(warmup_[name] - 1):
                step()
        except errors as e:
            failed[name] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            LOG.warning("%s failed: %s", name, failed[name])
            first_call[name] = math.nan
    names = [name for name in steps if name not in failed]
    timings = Timings({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names},
                      first_call, failed, [])  # fmt: skip
    num_rounds = max((repeats_[n] for n in names), default=0)
    schedule = {n: {(i * num_rounds) // repeats_[n] for i in range(min(repeats_[n], num_rounds))}
                for n in names}  # fmt: skip
    rounds = tqdm(range(num_rounds), desc=desc, disable=desc is None, file=sys.stderr, leave=False)
    for r in rounds:
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r in schedule[name]:
                cpu_start, start = time.process_time(), time.perf_counter()
                steps[name]()
                timings.wall_ms[name].append((time.perf_counter() - start) * 1e3)
                timings.cpu_ms[name].append((time.process_time() - cpu_start) * 1e3)
                timings.rounds[name].append(r)
                timings.calls.append(name)
        if on_round_end is not None:
            on_round_end(r)
    return timings


def fit_timer(unit: str = "epoch") -> Any:
    """A Keras callback recording the wall seconds of every ``"epoch"`` or ``"batch"`` of ``fit``
    in its ``seconds`` list (the first one includes tracing)."""
    import tensorflow as tf

    if unit not in ("epoch", "batch"):
        raise ValueError(f"`unit` must be 'epoch' or 'batch'. Received: unit={unit!r}")
    hook = "on_train_batch" if unit == "batch" else "on_epoch"  # only `unit`'s hooks are set
    timer, start = tf.keras.callbacks.Callback(), [0.0]
    timer.on_train_begin = lambda *_: setattr(timer, "seconds", [])
    setattr(timer, f"{hook}_begin", lambda *_: start.__setitem__(0, time.perf_counter()))
    setattr(timer, f"{hook}_end", lambda *_: timer.seconds.append(time.perf_counter() - start[0]))
    return timer


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux's ``VmHWM``, which ``clear_refs`` resets)."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) * 1024
    except (OSError, TypeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak if sys.platform == "darwin" else peak * 1024


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return int(psutil.Process().memory_info().rss)


def available_memory_bytes() -> int:
    """Memory available to new allocations without swapping (``psutil``)."""
    return int(psutil.virtual_memory().available)


_VERSIONED = {"numpy": "numpy", "pandas": "pandas", "pyarrow": "pyarrow", "faiss": "faiss",
              "tensorflow": "tensorflow", "tfrs": "tensorflow_recommenders",
              "recsampled": "recsampled"}  # fmt: skip


def machine_info(**extra: object) -> dict[str, Any]:
    """CPU model, cores, memory, platform and versions of the imported libraries (+ ``extra``)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    info: dict[str, Any] = {
        "cpu_model": model[1].strip() if model else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": int(psutil.virtual_memory().total), "platform": platform.platform(),
        "python": platform.python_version(),
    }  # fmt: skip
    for key, module in _VERSIONED.items():
        if module in sys.modules:
            info[key] = getattr(sys.modules[module], "__version__", None)
    if "tensorflow" in sys.modules:
        threading = sys.modules["tensorflow"].config.threading
        info["intra_op_threads"] = threading.get_intra_op_parallelism_threads()
        info["inter_op_threads"] = threading.get_inter_op_parallelism_threads()
    return info | extra


class Benchmark:
    """The facts around every report of benchmark ``name`` (its module): :meth:`report` gives
    ``schema_version, benchmark, created, command, machine (+ machine), settings, **sections,
    load_average {start, end}, peak_rss_mb, wall_s``."""

    def __init__(self, name: str, settings: object, *, schema_version: int,
                 argv: Sequence[str] | None = None,
                 machine: Mapping[str, object] | None = None):  # fmt: skip
        self.machine, self.name, self.schema_version = dict(machine or {}), name, schema_version
        self.settings = (
            dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings
        )
        self.command = " ".join(["python -m", name, *(sys.argv[1:] if argv is None else argv)])
        self.created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.load_start, self.started = load_average(), time.perf_counter()

    def report(self, **sections: object) -> dict[str, Any]:
        """The report so far (call again for checkpoints: end facts are read now)."""
        return {
            "schema_version": self.schema_version, "benchmark": self.name,
            "created": self.created, "command": self.command,
            "machine": machine_info(**self.machine), "settings": self.settings, **sections,
            "load_average": {"start": self.load_start, "end": load_average()},
            "peak_rss_mb": peak_rss_bytes() / 2**20, "wall_s": time.perf_counter() - self.started,
        }  # fmt: skip


def _json_default(value: object) -> object:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {value!r} (of type {type(value).__name__})")


def write_json(path: str | Path, report: Mapping[str, Any]) -> Path:
    """Writes ``report`` as indented JSON atomically (recsampled._io); NumPy values converted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.write_atomic(path, json.dumps(report, indent=2, default=_json_default) + "\n")
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "skipped"
    if isinstance(value, float):  # 3 significant digits below 100, thousands separators above
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if _is_number(value) else str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; numeric columns right-aligned, floats to 3 significant digits."""
    rows = [list(row) for row in rows]
    numeric = [bool(rows) and all(_is_number(row[i]) or row[i] in (None, "") for row in rows)
               for i in range(len(headers))]  # fmt: skip
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]  # fmt: skip
    return "\n".join(lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows])


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Saves a matplotlib figure (PNG) and closes it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return Path(path)


def configure_logging(level: int = logging.INFO) -> None:
    """``[name HH:MM:SS] message`` lines on stderr for the ``pipelines`` and ``recsampled``
    loggers."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(name)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for name in ("pipelines", "recsampled"):
        logging.getLogger(name).setLevel(level)


def log_uniform_ids(num_classes: int, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """int64 ids of ``shape`` with ``P(k) = log((k+2)/(k+1)) / log(N+1)`` (TF's log-uniform law)."""
    ids = np.floor(np.exp(rng.random(shape) * np.log(num_classes + 1.0))).astype(np.int64) - 1
    return np.clip(ids, 0, num_classes - 1)


def zipf_counts(num_classes: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """``[num_classes]`` counts ``max(1, round(1e9 (k + 1)^-exponent))`` in a random id order."""
    counts = np.maximum(1.0, np.round(1e9 * np.arange(1, num_classes + 1) ** -exponent))
    return rng.permutation(counts)


def integer(text: str) -> int:
    """Parses ``"1e5"`` or ``"100000"`` into ``100000``."""
    try:
        value = int(text) if text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        value = math.nan
    if not float(value).is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _comma_list(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        if not values or (kind is integer and min(values) <= 0):
            raise argparse.ArgumentTypeError(f"expected positive comma-separated values: {text!r}")
        return values

    parse.__name__ = f"{kind.__name__} list"
    return parse


def option_help(cls: type) -> dict[str, str]:
    """Field name -> help: the ``#:`` comment ending the field's (first) line or on the line
    above it, or the field's entry in the ``Attributes:`` section of a Google-style docstring."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = ""
    pattern = r"^    #: (.+)\n    (\w+): |^    (\w+): [^#\n]*#: (.+)$"
    helps = {m[2] or m[3]: m[1] or m[4] for m in re.finditer(pattern, source, re.MULTILINE)}
    section = entry = name = None  # indents of "Attributes:" and of its entries
    for line in (cls.__doc__ or "").splitlines():
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if text == "Attributes:":
            section = indent
        elif section is None or not text:
            continue
        elif indent <= section:
            break
        elif (entry is None or indent == entry) and (m := re.match(r"(\w+): (.*)", text)):
            entry, name, helps[m.group(1)] = indent, m.group(1), m.group(2)
        elif name is not None:
            helps[name] += " " + text
    return helps


def _argument(hint: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field type (empty where the CLI cannot set it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": integer if hint is int else hint}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is tuple and args[-1] is Ellipsis and args[0] in (int, str):
        return {"type": _comma_list(integer if args[0] is int else str)}
    return {}


def parse_options(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str | None = None,
    output: str | None = None,
    quick: T | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[T, argparse.Namespace]:
    """Parses a command line into an options dataclass.

    Every field of ``cls`` of a type the CLI can express (``int``, ``float``, ``str``, ``bool``,
    ``Literal[...]``, ``tuple[int | str, ...]``, each optionally ``| None``) becomes
    ``--field-name`` (``metadata={"flag": "--dim"}`` renames it; ``{"min": 1}`` checks it) with
    its ``#:`` comment as help; flags not given keep the default of ``cls()`` or, with
    ``--quick``, of ``quick``. ``output`` adds ``--output`` (this default), ``extra`` adds the
    benchmark's own arguments. Sets up logging (:func:`configure_logging`) first. Returns the
    options and the namespace.
    """
    configure_logging()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=formatter)
    if output is not None:
        parser.add_argument("--output", type=Path, default=Path(output), help="the JSON report")
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    defaults, helps, hints = cls(), option_help(cls), typing.get_type_hints(cls)
    fields = {}
    for field in dataclasses.fields(cls):
        if not (kwargs := _argument(hints[field.name])):
            continue
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        if "type" in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        default = getattr(defaults, field.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = helps.get(field.name, "").replace("%", "%%")
        parser.add_argument(flag, dest=field.name, default=argparse.SUPPRESS, **kwargs,
                            help=f"{text} (default: {shown})")  # fmt: skip
        fields[field.name] = (flag, field.metadata.get("min"))
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    base = quick if quick is not None and args.quick else defaults
    options = dataclasses.replace(base, **{n: getattr(args, n) for n in fields if hasattr(args, n)})
    for name, (flag, least) in fields.items():
        value = getattr(options, name)
        if least is not None and value is not None and value < least:
            parser.error(f"{flag} must be at least {least}; got {value}")
    return options, args
