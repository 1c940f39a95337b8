"""Fuzzing (issue 16): configs, CLI argument lists, data files and artifact parts.

Every example must end in success or a typed :class:`~recsampled.errors.RecsampledError` (the
CLI: exit status 0/2 and one line, never a traceback), within a deadline (SIGALRM: a hang fails),
and must write nothing outside its output folder (the working directory and the inputs are
compared before and after). Examples are derandomised (the same ones every run) and bounded so
that the file takes well under a minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import recsampled  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

# isort: split
import tensorflow as tf

from recsampled import cli
from recsampled._io import sha256_part
from recsampled.config import (
    Config,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    TaskConfig,
    TrainingConfig,
    load_config,
)
from recsampled.data import read_interactions
from recsampled.errors import ConfigError, RecsampledError
from recsampled.index import Retriever, export_artifact
from recsampled.index.integrity import part_size

FUZZ = settings(
    max_examples=30,
    deadline=None,  # the SIGALRM deadline below is the one that counts
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Hang(BaseException):
    """Raised by SIGALRM: an example ran past its deadline (BaseException: not swallowed)."""


@contextlib.contextmanager
def deadline(seconds: int):
    def expire(signum, frame):
        raise Hang(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink()
    }


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """``(inputs, outputs)`` folders; the cwd is an empty folder that must stay empty."""
    cwd, inputs, outputs = tmp_path / "cwd", tmp_path / "in", tmp_path / "out"
    for folder in (cwd, inputs, outputs):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    yield inputs, outputs
    assert snapshot(cwd) == {}, "something was written into the working directory"


@contextlib.contextmanager
def untouched(*folders: Path):
    before = [snapshot(f) for f in folders]
    yield
    assert [snapshot(f) for f in folders] == before, "an input was modified"


def note(kind: str) -> None:
    """Hypothesis's ``event`` (the statistics of the outcomes), outside a test a no-op."""
    with contextlib.suppress(InvalidArgument):
        event(kind)


def typed_or_success(call, seconds: int = 20):
    """Runs ``call``; a RecsampledError counts as a clear refusal, anything else fails."""
    with deadline(seconds):
        try:
            result = call()
        except RecsampledError as e:
            note(type(e).__name__)
            return None
    note("success")
    return result


# -- configs -----------------------------------------------------------------------------------

SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "task": TaskConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}
KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["file", "synthetic", "mixed", "in_batch", "kernel", "hnsw", "1e-3", ".inf"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
config_dicts = st.fixed_dictionaries(
    {},
    optional={
        name: st.dictionaries(st.sampled_from(keys + ["bogus"]), values, max_size=4)
        for name, keys in KEYS.items()
    }
    | {"bogus": values},
)


@FUZZ
@given(config=config_dicts)
def test_config_dicts_and_their_yaml(config, sandbox):
    inputs, _ = sandbox
    typed_or_success(lambda: Config.from_dict(config))
    path = inputs / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    typed_or_success(lambda: load_config(path))


YAML_TOKENS = [
    "data:", "model:", "  embedding_dim: ", "training:", "  learning_rate: ", "- ", "&a ", "*a",
    "!!python/object/apply:os.system ['touch pwned']", "{", "}", "[", "]", ": ", "\n", "  ",
    "1e-3", ".nan", "~", "'", '"', "\t", "\x00", "\ufeff", "data: {source: file}", "<<: *a",
]  # fmt: skip


printable = st.text(
    st.characters(blacklist_categories=["Cc", "Cs"]) | st.sampled_from("\n\t"), max_size=6
)  # fmt: skip  (control characters: test_yaml_control_character)


@FUZZ
@given(
    text=st.lists(
        st.sampled_from([t for t in YAML_TOKENS if t != "\x00"]) | printable, max_size=25
    ).map("".join)
)
def test_config_yaml_text(text, sandbox):
    inputs, _ = sandbox
    path = inputs / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    typed_or_success(lambda: load_config(path))
    assert not Path("pwned").exists() and not (inputs / "pwned").exists()


@pytest.mark.parametrize("text", ["\x1f", "data: {source: file}\x00", "\ufeffmodel:\x07"])
def test_yaml_control_character(text, sandbox):
    inputs, _ = sandbox
    path = inputs / "config.yaml"
    path.write_text(text)
    with pytest.raises(
        ConfigError,
        match=r"config\.yaml: not valid YAML, character \d+ \(the "
        r"control character #x[0-9a-f]+ is not allowed",
    ):
        load_config(path)


DOTTED = [f"{s}.{k}" for s, keys in KEYS.items() for k in keys] + [
    "data.split.kind", "data.split.validation.per_user", "data.synthetic.num_users",
    "task.kernel.alpha", "evaluation.ials.factors", "data.item_features.path", "nope.x", "data",
]  # fmt: skip


@FUZZ
@given(
    overrides=st.lists(
        st.tuples(st.sampled_from(DOTTED) | st.text(max_size=8), values.map(yaml.safe_dump)).map(
            lambda kv: f"{kv[0]}={kv[1].strip()}"
        )
        | st.text(max_size=10),
        max_size=4,
    )
)
def test_config_overrides(overrides, sandbox):
    typed_or_success(lambda: load_config(overrides=overrides))


# -- data files ----------------------------------------------------------------------------------

HEADERS = ["user_id", "item_id", "timestamp", "rating", "userId", "movieId", "ts", "item",
           "user", "score", "weight", "x", "user_id"]  # fmt: skip
CELLS = st.one_of(
    st.integers(-5, 10**20).map(str),
    st.sampled_from(["255.0", "2.5", "", "NaN", "abc", "2020-01-01", "2020-13-45T99:00",
                     "1e308", "-inf", " 7 ", '"1,2"', "\u00e9", "0x1F", "00012"]),
    st.text(max_size=5),
)  # fmt: skip


@st.composite
def csv_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    if draw(st.integers(0, 2)) == 0:  # a clean log (10 users, 8 items), one cell replaced
        rows = [f"{u},{(u * 3 + k) % 8},{1000 + k}" for u in range(10) for k in range(4)]
        if draw(st.booleans()):
            at = draw(st.integers(0, len(rows)))
            rows[at:at] = [draw(st.lists(CELLS, min_size=3, max_size=3).map(",".join))]
        return "\n".join(["user_id,item_id,timestamp", *rows]).encode(errors="surrogatepass")
    delimiter = draw(st.sampled_from([",", ",", "\t", ";", "::"]))
    header = draw(st.lists(st.sampled_from(HEADERS), min_size=1, max_size=5))
    rows = draw(st.lists(st.lists(CELLS, min_size=1, max_size=6), max_size=12))
    lines = [delimiter.join(header)] + [delimiter.join(row) for row in rows]
    return "\n".join(lines).encode("utf-8", errors="surrogatepass")


@FUZZ
@given(
    content=csv_bytes(),
    name=st.sampled_from(["log.csv", "log.csv", "log.tsv", "u.data", "ratings.dat", "x.parquet"]),
    options=st.fixed_dictionaries(
        {},
        optional={
            "on_bad_rows": st.sampled_from(["error", "skip"]),
            "id_dtype": st.sampled_from(["auto", "int", "str"]),
            "k_core": st.integers(1, 3),
            "timestamp_col": st.sampled_from(["timestamp", "ts"]),
        },
    ),
)
def test_data_files(content, name, options, sandbox):
    inputs, _ = sandbox
    path = inputs / name
    path.write_bytes(content)
    if name in ("u.data", "ratings.dat"):  # MovieLens layouts fix the columns (a ValueError)
        options.pop("timestamp_col", None)
    with untouched(inputs):
        log = typed_or_success(lambda: read_interactions(path, **options))
    if log is not None:
        assert log.user_ids.dtype == np.int32 and len(log) > 0


# -- the CLI -------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> int:
    with deadline(60):
        try:
            status = cli.main(argv)
        except SystemExit as e:  # argparse: usage errors exit with 2, --help with 0
            status = e.code
    err = capsys.readouterr().err
    note(f"exit status {status}")
    assert "Traceback" not in err, err
    assert status in (0, 1, 2), (status, err)
    if status:
        assert err.strip().splitlines()[-1].startswith(("recsampled", "usage:")), err
    return status


NUMBERS = st.sampled_from(["3", "3", "10", "100", "0", "-1", "1000000000000", "abc", "2.5"])
SETS = st.sampled_from(
    ["training.epochs=0", "model.embedding_dim=100000000", "training.learning_rate=.inf",
     "task.negatives=in_batch", "data.split.kind=time_cut", "data.min_rating=4", "x=1",
     "evaluation.ks=[]", "data.user_col=nope", "data.split.kind=random_holdout",
     "training.batch_size=4", "data.timestamp_col=timestamp"]
)  # fmt: skip


@settings(FUZZ, max_examples=8)
@given(
    content=csv_bytes(),
    sets=st.lists(SETS, max_size=3),
    extra=st.lists(st.sampled_from(["-q", "-v", "--force", "--bogus", "--set", "k"]), max_size=2),
)
def test_cli_train_on_fuzzed_logs(content, sets, extra, sandbox, capsys):
    inputs, outputs = sandbox
    (inputs / "log.csv").write_bytes(content)
    argv = ["train", "--output", str(outputs / "run"), "--set", "data.source=file",
            "--set", f"data.path={inputs / 'log.csv'}", "--set", "training.steps_per_epoch=2",
            "--set", "training.epochs=1", "--set", "evaluation.baselines=[]"]  # fmt: skip
    for item in sets:
        argv += ["--set", item]
    with untouched(inputs):
        run_cli(argv + extra, capsys)
    shutil.rmtree(outputs / "run", ignore_errors=True)


# -- artifacts -----------------------------------------------------------------------------------

NUM_ITEMS, NUM_USERS, DIM = 40, 12, 4


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    tf.keras.utils.set_random_seed(0)
    tower = tf.keras.Sequential([tf.keras.layers.Embedding(NUM_USERS, DIM)])
    tower(tf.constant([0], tf.int64))
    path = tmp_path_factory.mktemp("fuzz") / "artifact"
    export_artifact(
        path,
        item_embeddings=rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32),
        item_ids=np.arange(100, 100 + NUM_ITEMS),
        query_model=tower,
        user_ids=np.array([f"u{k}" for k in range(NUM_USERS)]),
        metric="dot",
        index="flat",
        seen=[rng.choice(NUM_ITEMS, 3, replace=False) for _ in range(NUM_USERS)],
        item_popularity=rng.integers(0, 50, NUM_ITEMS),
    )
    return path


def _json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _json_paths(item, (*prefix, k))


def _rehash(path: Path, part: str) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    if isinstance(manifest.get("files"), dict) and part in manifest["files"]:
        manifest["files"][part] = sha256_part(path / part)
        manifest.setdefault("sizes", {})[part] = part_size(path, part)
    (path / "manifest.json").write_text(json.dumps(manifest))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**18), 10**18)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)  # fmt: skip
arrays = st.one_of(
    st.builds(lambda n: np.arange(n) - 3, st.integers(0, 60)),
    st.builds(lambda n: np.full(n, np.nan), st.integers(0, 60)),
    st.builds(lambda n: np.array([f"u{k % 5}" for k in range(n)]), st.integers(0, 60)),
    st.builds(lambda n: np.zeros((n, 2), np.int8), st.integers(0, 20)),
    st.just(np.array(10**15)),
)


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["manifest", "manifest", "array", "bytes"]))
    if kind == "manifest":
        return kind, draw(st.integers(0, 10**6)), draw(json_values), draw(st.booleans())
    part = draw(st.sampled_from(["item_ids.npy", "user_ids.npy", "item_popularity.npy",
                                 "seen.npz", "index.faiss"]))  # fmt: skip
    if kind == "array":
        return kind, part, draw(arrays), True
    return kind, part, draw(st.binary(max_size=64)), draw(st.booleans())


def _mutate(path: Path, mutation) -> None:
    kind, where, value, flag = mutation
    if kind == "manifest":
        manifest = json.loads((path / "manifest.json").read_text())
        paths = [p for p in _json_paths(manifest) if p]
        target = paths[where % len(paths)]
        parent = manifest
        for key in target[:-1]:
            parent = parent[key]
        if flag and isinstance(parent, dict):
            del parent[target[-1]]
        else:
            parent[target[-1]] = value
        (path / "manifest.json").write_text(json.dumps(manifest))
        return
    if kind == "array":
        if where == "seen.npz":
            np.savez(path / where, indptr=value, indices=value)
        else:
            np.save(path / where, value)
    else:
        (path / where).write_bytes(value)
    if flag:  # an attacker re-hashes; an accident does not
        _rehash(path, where)


@settings(FUZZ, max_examples=20)
@given(mutation=mutations())
def test_artifact_parts(mutation, artifact, sandbox):
    inputs, _ = sandbox
    path = inputs / "artifact"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(artifact, path, symlinks=True)
    _mutate(path, mutation)
    with untouched(inputs):

        def load_and_recommend():
            retriever = Retriever.load(path)
            return retriever.recommend(retriever.user_ids[:2], k=5)

        top = typed_or_success(load_and_recommend)
    if top is not None:
        assert top.ids.shape == (2, 5)


@settings(FUZZ, max_examples=15)
@given(
    user=st.sampled_from(["u1", "u1 u2", "u1", "u999", "", "1"]),
    k=NUMBERS,
    flags=st.lists(st.sampled_from(["--json", "--include-seen", "--popular-fallback",
                                    "--all-users", "--trust-artifact"]), max_size=1),
    output=st.sampled_from([None, "recs.csv", "recs.parquet", "recs.txt"]),
)  # fmt: skip
def test_cli_recommend(user, k, flags, output, artifact, sandbox, capsys):
    _, outputs = sandbox
    argv = ["recommend", "--artifacts", str(artifact), "-k", k, *flags]
    argv += [] if "--all-users" in flags else ["--user", *user.split()]
    argv += [] if output is None else ["--output", str(outputs / output)]
    with untouched(artifact):
        run_cli(argv, capsys)


@settings(FUZZ, max_examples=10)
@given(
    command=st.sampled_from(["export", "evaluate"]),
    source=st.sampled_from(["missing", "file", "empty", "artifact"]),
)
def test_cli_export_and_evaluate_bad_runs(command, source, artifact, sandbox, capsys):
    inputs, outputs = sandbox
    run = {"missing": inputs / "nope", "empty": inputs, "file": inputs / "f",
           "artifact": artifact}[source]  # fmt: skip
    (inputs / "f").write_text("not a run")
    argv = [command, "--run", str(run)]
    argv += ["--output", str(outputs / "x")] if command == "export" else []
    with untouched(inputs, artifact):
        assert run_cli(argv, capsys) == 2


@pytest.mark.parametrize("folder", ["empty", "artifact"])
def test_export_from_a_folder_that_is_no_run_leaves_it_untouched(folder, artifact, sandbox, capsys):
    inputs, outputs = sandbox
    run = inputs
    if folder == "artifact":
        run = inputs / "artifact"
        shutil.copytree(artifact, run)
    with untouched(inputs):
        assert run_cli(["export", "--run", str(run), "--output", str(outputs / "x")], capsys) == 2
