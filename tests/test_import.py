"""``import recsampled`` selects Keras 2 by itself, and fails early when that is impossible."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environ |= {"TF_CPP_MIN_LOG_LEVEL": "3"} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300
    )


def test_fresh_interpreter_gets_keras_2():
    result = _run(
        "import recsampled, tensorflow as tf, tensorflow_recommenders as tfrs; "
        "print(tf.keras.__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")


def test_tensorflow_imported_first_still_works_if_keras_not_touched():
    result = _run("import tensorflow as tf; import recsampled; print(tf.keras.__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")


@pytest.mark.parametrize(
    ("code", "env", "message"),
    [
        ("import tensorflow as tf; tf.keras.layers; import recsampled.tasks", {}, "Keras 3"),
        (
            "import recsampled.layers",
            {"TF_USE_LEGACY_KERAS": "0"},
            "TF_USE_LEGACY_KERAS is set to '0'",
        ),
    ],
)
def test_import_error_says_what_to_do(code, env, message):
    result = _run(code, **env)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and message in result.stderr
    assert "TF_USE_LEGACY_KERAS" in result.stderr


def test_public_api_names_resolve():
    result = _run(
        "import recsampled as rs; missing = [n for n in rs.__all__ if not hasattr(rs, n)]; "
        "print(missing); print(rs.sampled_softmax_loss.__module__, rs.Retrieval.__module__)"
    )
    assert result.returncode == 0, result.stderr
    missing, modules = result.stdout.strip().splitlines()
    assert missing == "[]"
    assert modules == "recsampled.losses.sampled_softmax recsampled.tasks.retrieval"


def test_import_recsampled_imports_no_tensorflow():
    result = _run("import recsampled, sys; assert 'tensorflow' not in sys.modules, 'tensorflow'")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["train", "--help"], ["export", "--help"], ["evaluate", "--help"],
     ["serve", "--help"]],
)  # fmt: skip
def test_cli_help_imports_neither_tensorflow_nor_faiss(argv):
    code = (
        "import sys\n"
        "from recsampled import cli\n"
        "try:\n"
        f"    cli.main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('tensorflow', 'faiss', 'fastapi') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "usage: recsampled" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_cli_hides_tensorflow_start_up_lines():
    code = "from recsampled import cli; raise SystemExit(cli.main(['recommend', '--artifacts', "
    code += "'/nonexistent/artifact', '--user', '1']))"
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recsampled recommend: error: [folder]"), lines
