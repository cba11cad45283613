"""The package's public face: every documented name loads on first use, from the module that defines it, and
importing the package loads neither numpy nor a wing."""

import subprocess
import sys

import pytest

import bertdeploy

BUILD_NAMES = ["finetune", "FinetuneOptions", "FinetuneResult", "distill", "DistillOptions", "DistillResult",
               "export", "ExportOptions", "ExportResult", "bench", "BenchOptions", "BenchResult"]


def test_importing_the_package_loads_no_wing_and_no_numpy():
    code = ("import sys, bertdeploy; heavy = [m for m in ('numpy', 'onnxruntime', 'torch', 'bertdeploy.builder', "
            "'bertdeploy.runtime', 'bertdeploy.benchmark') if m in sys.modules]; print(heavy)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize("name", ["Predictor", "Prediction", "RuntimeOptions"])
def test_the_runtime_names_load_without_the_build_wing(name):
    code = (f"import sys; from bertdeploy import {name}; "
            "print([m for m in ('torch', 'bertdeploy.builder', 'bertdeploy.benchmark') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize("name", BUILD_NAMES)
def test_the_build_names_are_the_library_functions_and_options(name):
    pytest.importorskip("torch")
    value = getattr(bertdeploy, name)
    assert value.__name__ == name and value.__module__.startswith(("bertdeploy.builder.", "bertdeploy.benchmark."))
    assert name in dir(bertdeploy) and name in bertdeploy.__all__


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'fine_tune'"):
        bertdeploy.fine_tune  # noqa: B018
