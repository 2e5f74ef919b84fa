"""specguard.models: model references (the embedded default, hub names, GGUF files, directories)."""

from __future__ import annotations

import pytest

from specguard.errors import ModelError
from specguard.models import resolve


def test_model_references(tmp_path):
    assert resolve("smollm2-135m")[0] == "gguf"
    assert resolve("org/name") == ("hub", "org/name")
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelError, match="unknown model reference"):
        resolve("not a model")
