"""recsampled.errors: one base class, every error importable from its old place."""

from __future__ import annotations

import pytest

from recsampled import errors


def test_every_error_derives_from_the_base_class_and_value_error():
    names = [n for n in errors.__all__ if n != "RecsampledError"]
    for name in names:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.RecsampledError) and issubclass(cls, ValueError), name


def test_the_old_import_paths_name_the_same_classes():
    from recsampled.config import ConfigError
    from recsampled.data import DataError
    from recsampled.index import (
        ArtifactError,
        ArtifactNotFoundError,
        UnknownItemError,
        UnknownUserError,
    )

    assert ConfigError is errors.ConfigError and DataError is errors.DataError
    assert ArtifactError is errors.ArtifactError
    assert ArtifactNotFoundError is errors.ArtifactNotFoundError
    assert UnknownUserError is errors.UnknownUserError
    assert UnknownItemError is errors.UnknownItemError


def test_part_errors_keep_path_and_part_and_unknown_ids_read_as_messages(tmp_path):
    error = errors.ArtifactNotFoundError("gone", path=tmp_path, part="index.faiss")
    assert isinstance(error, FileNotFoundError) and error.part == "index.faiss"
    assert error.path == tmp_path
    assert errors.RecsampledError("x").part is None
    unknown = errors.UnknownUserError("User id 7 is not known", [7, 8])
    assert isinstance(unknown, KeyError) and str(unknown) == "User id 7 is not known"
    assert unknown.user_ids == [7, 8]
    with pytest.raises(errors.RecsampledError):
        raise errors.UnknownItemError("no item", ["a"])
