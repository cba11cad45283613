"""The serve tests' shared fixture: the tiny classifier's export loaded on its fp32 variant, one thread."""

from __future__ import annotations

import pytest

from bertdeploy.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def fp32(tiny_artifacts) -> Predictor:
    return Predictor.load(tiny_artifacts, variant="fp32", threads=1)
