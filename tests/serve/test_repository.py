"""`bertdeploy serve --model-repository ROOT`: several models, versions, load and unload, `--poll`, a load that fails
changing nothing, and reloads under load that fail no request. Real servers on loopback, real exports (hard-linked
copies of the tiny classifier's)."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from helpers import Held, linked_copy, metric, running_repository, serve_command, wait_until

from bertdeploy.errors import BertdeployError
from bertdeploy.serve import repository
from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.repository import Policy

TEXTS = ["这个手机很好", "质量太差了", "还行吧"]
FAST = {"variant": "fp32", "threads": 1, "max_wait_ms": 1}  # the servers' settings: one small model each


@pytest.fixture
def repo(tiny_artifacts, tmp_path) -> Path:
    """ROOT with model `a` (versions 1 and 2) and model `b` (an export directly in its folder: version 1)."""
    root = tmp_path / "models"
    for folder in ("a/1", "a/2", "b"):
        linked_copy(tiny_artifacts, root / folder)
    return root


def _add(tiny_artifacts, root: Path, model: str, version: int) -> Path:
    """A new version, as a user should copy it: under another name, then renamed (one step for --poll)."""
    staged = linked_copy(tiny_artifacts, root / model / f".{version}.incoming")
    return staged.rename(root / model / str(version))


def _tamper(path: Path) -> None:
    """Flip one byte of the version's fp32 model, in a copy of its own (the others are hard links to it)."""
    model = path / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.unlink()
    model.write_bytes(bytes(data))


def _predict(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"texts": TEXTS, **body}, timeout=30)


def _load(url: str, model: str, action: str = "load", headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v2/repository/models/{model}/{action}", headers=headers or {}, timeout=60)


def _index(url: str) -> dict[tuple[str, str], dict]:
    return {(e["name"], e["version"]): e for e in httpx.post(f"{url}/v2/repository/index").json()}


def test_the_repository_layout_versions_and_policy(tiny_artifacts, tmp_path):
    root = tmp_path / "models"
    linked_copy(tiny_artifacts, root / "a" / "1")
    linked_copy(tiny_artifacts, root / "a" / "10")
    (root / "a" / "3.incoming").mkdir()  # not a version
    (root / "a" / "03").mkdir()  # nor this: no leading zeros
    (root / "a" / "7").mkdir()  # a version whose copy has not begun
    linked_copy(tiny_artifacts, root / "b")  # version 1, the export in the folder itself
    (root / ".hidden").mkdir()
    (root / "notes.txt").write_text("not a model")
    found = repository.scan(root)
    assert list(found) == ["a", "b"]
    assert [v.number for v in found["a"]] == [10, 7, 1] and [v.number for v in found["b"]] == [1]
    assert found["b"][0].path == root / "b" and found["b"][0].complete
    assert not found["a"][1].complete and "no manifest.json yet" in found["a"][1].problem
    assert [v.number for v in repository.chosen(found["a"], Policy.parse("latest"))] == [10]
    assert [v.number for v in repository.chosen(found["a"], Policy.parse("latest:2"))] == [10, 1]
    assert [v.number for v in repository.chosen(found["a"], Policy.parse("all"), complete_only=False)] == [10, 7, 1]
    for bad in ("newest", "latest:0", "latest:", "all:2"):
        with pytest.raises(BertdeployError, match="--version-policy"):
            Policy.parse(bad)
    # half-copied: a file missing, a file short, a manifest not whole yet
    (root / "a" / "10" / "tokenizer.json").unlink()
    assert "tokenizer.json: missing" in repository.versions(root, "a")[0].problem
    (root / "a" / "1" / "model.onnx").unlink()
    (root / "a" / "1" / "model.onnx").write_bytes(b"onnx")
    assert "4 bytes, but the manifest records" in repository.versions(root, "a")[-1].problem
    manifest = (root / "b" / "manifest.json").read_text()
    (root / "b" / "manifest.json").unlink()
    (root / "b" / "manifest.json").write_text(manifest[:100])
    assert "not valid JSON yet" in repository.versions(root, "b")[0].problem
    linked_copy(tiny_artifacts, root / "b" / "2")  # both layouts in one folder
    assert "keep one of the two layouts" in repository.versions(root, "b")[0].problem


def test_several_models_by_name_and_version_on_both_protocols(repo):
    with running_repository(repo, version_policy="all", **FAST) as url:
        refused = _predict(url)
        assert refused.status_code == 422 and "name one with 'model'" in refused.json()["error"]
        newest = _predict(url, model="a")
        assert newest.status_code == 200 and newest.json()["version"] == 2 and newest.json()["model"] == "a"
        assert _predict(url, model="a", version=1).json()["version"] == 1
        assert _predict(url, model="b").json()["version"] == 1
        missing = _predict(url, model="a", version=3)
        assert missing.status_code == 404 and "it serves versions 1, 2" in missing.json()["error"]
        assert _predict(url, model="c").status_code == 404
        body = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": TEXTS}]}
        for path, version in (("/v2/models/a/infer", "2"), ("/v2/models/a/versions/1/infer", "1"),
                              ("/v2/models/b/versions/1/infer", "1")):
            answer = httpx.post(f"{url}{path}", json=body)
            assert answer.status_code == 200 and answer.json()["model_version"] == version, answer.text
        assert httpx.post(f"{url}/v2/models/a/versions/3/infer", json=body).status_code == 404
        assert httpx.get(f"{url}/v2/models/a").json()["versions"] == ["1", "2"]
        assert httpx.get(f"{url}/v2/models/a/versions/1/ready").status_code == 200
        index = _index(url)
        assert set(index) == {("a", "1"), ("a", "2"), ("b", "1")}
        assert all(e["state"] == "READY" and e["memory_bytes"] > 0 for e in index.values()), index
        assert "model_repository" in httpx.get(f"{url}/v2").json()["extensions"]
        # metrics by model and version
        assert metric(url, "bertdeploy_requests_total", route="/predict", model="a", version="1", status="200") == 1
        assert metric(url, "bertdeploy_batch_size_count", model="b", version="1") >= 1
        assert metric(url, "bertdeploy_model_memory_bytes", model="a", version="2") > 0
        assert metric(url, "bertdeploy_model_loads_total", model="a", result="loaded") == 2


def test_reloads_under_load_fail_no_request(tiny_artifacts, repo):
    """Clients keep asking model `a` while new versions are loaded five times (and `b` is reloaded): not one
    request fails, each load is answered once its version serves, and the old versions are freed."""
    apps: list = []
    with running_repository(repo, apps=apps, **FAST) as url:
        statuses, versions, stop = Counter(), Counter(), threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    answer = http.post(f"{url}/predict", json={"texts": TEXTS, "model": "a"})
                    statuses[answer.status_code] += 1
                    if answer.status_code == 200:
                        versions[answer.json()["version"]] += 1

        def answered(count: int):
            return lambda: sum(statuses.values()) > count

        clients = [threading.Thread(target=client) for _ in range(8)]
        for thread in clients:
            thread.start()
        try:
            for version in range(3, 8):
                _add(tiny_artifacts, repo, "a", version)
                loaded = _load(url, "a")
                assert loaded.status_code == 200 and loaded.json()["versions"] == [str(version)], loaded.text
                wait_until(answered(sum(statuses.values()) + 8), message="the clients stalled")
                assert _predict(url, model="a").json()["version"] == version
            b = apps[0].state.models.table["b"][1]
            assert _load(url, "b").status_code == 200  # the same version again: reloaded all the same
            assert apps[0].state.models.table["b"][1] is not b
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        assert set(statuses) == {200}, statuses
        assert {2, 7} <= set(versions), versions
        table = apps[0].state.models.table
        assert list(table["a"]) == [7] and list(table["b"]) == [1]
        assert metric(url, "bertdeploy_model_memory_bytes", model="a", version="2") == 0  # its series is gone
        assert metric(url, "bertdeploy_model_loads_total", model="a", result="loaded") == 6


def test_a_load_that_fails_changes_nothing(tiny_artifacts, repo):
    with running_repository(repo, **FAST) as url:
        (repo / "a" / "3").mkdir()  # being copied: no manifest yet
        refused = _load(url, "a")
        assert refused.status_code == 409 and "version 3" in refused.json()["error"], refused.text
        shutil.rmtree(repo / "a" / "3")
        _tamper(_add(tiny_artifacts, repo, "a", 3))
        refused = _load(url, "a")
        assert refused.status_code == 422 and "sha256" in refused.json()["error"], refused.text
        shutil.rmtree(repo / "a" / "3")
        finetuned = linked_copy(tiny_artifacts, repo / "a" / "3")  # another kind of directory: incompatible
        manifest = json.loads((finetuned / "manifest.json").read_text())
        (finetuned / "manifest.json").unlink()
        (finetuned / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
        refused = _load(url, "a")
        assert refused.status_code == 422 and "schema" in refused.json()["error"], refused.text
        for missing in ("c", "..", "a%00b"):
            assert _load(url, missing).status_code == 404
        answer = _predict(url, model="a")
        assert answer.status_code == 200 and answer.json()["version"] == 2  # the serving version answers on
        assert metric(url, "bertdeploy_model_loads_total", model="a", result="failed") == 3
        assert "schema" in _index(url)[("a", "3")]["reason"]
        assert httpx.get(f"{url}/v2/health/live").status_code == 200 and \
            httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_a_load_of_two_versions_of_which_one_fails_changes_nothing(tiny_artifacts, repo):
    apps: list = []
    with running_repository(repo, apps=apps, version_policy="latest:2", **FAST) as url:
        table = apps[0].state.models.table
        before = dict(table["a"])
        _add(tiny_artifacts, repo, "a", 3)  # loads
        _tamper(repo / "a" / "2")  # changed, and cannot load: the whole load fails
        refused = _load(url, "a")
        assert refused.status_code == 422 and "version 2" in refused.json()["error"], refused.text
        assert table["a"] == before  # the same versions, the same objects
        assert metric(url, "bertdeploy_model_memory_bytes", model="a", version="2") == before[2].memory_bytes
        assert "version=\"3\"" not in httpx.get(f"{url}/metrics").text  # no series of the version never served
        assert _predict(url, model="a").json()["version"] == 2


def test_unload_lets_the_requests_it_holds_finish_then_frees_the_model(repo):
    apps: list = []
    with running_repository(repo, apps=apps, **FAST) as url:
        served = apps[0].state.models.table["a"][2]
        held = served.batcher.predictor = Held(served.batcher.predictor, "iter_encoded")
        answers: list = []
        asking = threading.Thread(target=lambda: answers.append(_predict(url, model="a")))
        asking.start()
        assert held.entered.wait(10)
        unloading = threading.Thread(target=lambda: answers.append(_load(url, "a", "unload")))
        unloading.start()
        wait_until(lambda: "a" not in apps[0].state.models.table, message="not taken out of the table")
        assert _predict(url, model="a").status_code == 404  # new requests: no such model, at once
        assert unloading.is_alive()  # it waits for the request in flight
        held.release.set()
        asking.join(10)
        unloading.join(10)
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert not served.batcher.alive and served.in_use == 0
        assert _index(url)[("a", "2")]["state"] == "UNAVAILABLE"
        assert _load(url, "a", "unload").status_code == 404
        assert _load(url, "a").status_code == 200 and _predict(url, model="a").status_code == 200


def test_startup_skips_a_broken_version_and_a_new_version_loads_beside_the_unchanged_ones(tiny_artifacts, repo):
    _tamper(_add(tiny_artifacts, repo, "a", 3))  # the newest version is broken from the start
    apps: list = []
    with running_repository(repo, apps=apps, version_policy="latest:2", **FAST) as url:
        table = apps[0].state.models.table
        assert sorted(table["a"]) == [1, 2]  # the next older complete versions instead
        assert "sha256" in _index(url)[("a", "3")]["reason"]
        shutil.rmtree(repo / "a" / "3")
        two = table["a"][2]
        _add(tiny_artifacts, repo, "a", 4)
        assert _load(url, "a").json()["versions"] == ["2", "4"]
        assert table["a"][2] is two  # unchanged: kept as it was, not loaded again
        assert _predict(url, model="a", version=1).status_code == 404


def test_a_repository_of_which_nothing_loads(tiny_artifacts, tmp_path):
    """Not live without --poll (a restart may help, nothing else will); with --poll live, and served once fixed."""
    root = tmp_path / "models"
    _tamper(linked_copy(tiny_artifacts, root / "a" / "1"))
    with running_repository(root, wait_ready=False, **FAST) as url:
        wait_until(lambda: httpx.get(f"{url}/v2/health/live").status_code == 503, message="still live")
    with running_repository(root, poll=0.05, **FAST) as url:
        assert httpx.get(f"{url}/v2/health/live").status_code == 200 and _predict(url).status_code == 422
        shutil.rmtree(root / "a" / "1")
        _add(tiny_artifacts, root, "a", 2)
        wait_until(lambda: _predict(url).status_code == 200, message="the fixed model is not served")


def test_a_stalled_model_gets_504s_while_the_others_answer(repo):
    """Each model has its batcher: the deadline, the queue and the metrics hold per model."""
    apps: list = []
    with running_repository(repo, apps=apps, request_timeout=0.5, **FAST) as url:
        served = apps[0].state.models.table["a"][2]
        held = served.batcher.predictor = Held(served.batcher.predictor, "iter_encoded")
        try:
            late = _predict(url, model="a")
            assert late.status_code == 504 and "request timeout" in late.json()["error"], late.text
            assert _predict(url, model="b").status_code == 200
            assert metric(url, "bertdeploy_requests_total", model="a", version="2", status="504") == 1
            assert metric(url, "bertdeploy_requests_total", model="b", version="1", status="200") == 1
        finally:
            held.release.set()


def test_poll_loads_complete_versions_only_once_settled_and_unloads_removed_models(tiny_artifacts, repo):
    apps: list = []
    with running_repository(repo, apps=apps, poll=0.05, **FAST) as url:
        loader = apps[0].state.models.loader

        def looks(count: int) -> None:
            seen = loader.looks
            wait_until(lambda: loader.looks >= seen + count, message="--poll does not look")

        half = linked_copy(tiny_artifacts, repo / "a" / "3")
        (half / "manifest.json").unlink()  # half-copied: the manifest comes last
        looks(4)
        assert _predict(url, model="a").json()["version"] == 2
        shutil.copy(tiny_artifacts / "manifest.json", half / "manifest.json")
        wait_until(lambda: _predict(url, model="a").json()["version"] == 3, message="version 3 never served")
        _tamper(_add(tiny_artifacts, repo, "a", 4))
        wait_until(lambda: metric(url, "bertdeploy_model_loads_total", model="a", result="failed") == 1,
                   message="the tampered version's failure is not counted")
        looks(4)  # tried once, not at every look
        assert metric(url, "bertdeploy_model_loads_total", model="a", result="failed") == 1
        assert _predict(url, model="a").json()["version"] == 3
        linked_copy(tiny_artifacts, repo / "c")  # a new model
        wait_until(lambda: _predict(url, model="c").status_code == 200, message="model c never served")
        shutil.rmtree(repo / "b")
        wait_until(lambda: _predict(url, model="b").status_code == 404, message="model b still served")


def test_poll_unloads_nothing_when_root_looks_empty(repo):
    """A volume that shows no model folder at all (unmounted, say) is not taken for every model removed."""
    apps: list = []
    with running_repository(repo, apps=apps, poll=0.05, **FAST) as url:
        loader = apps[0].state.models.loader
        for name in ("a", "b"):
            (repo / name).rename(repo / f".{name}.away")
        seen = loader.looks
        wait_until(lambda: loader.looks >= seen + 4, message="--poll does not look")
        assert _predict(url, model="a").status_code == 200 and _predict(url, model="b").status_code == 200


def test_the_loaded_models_are_capped(tiny_artifacts, repo):
    with running_repository(repo, version_policy="all", max_loaded_models=2, **FAST) as url:  # what fits loads
        index = _index(url)
        assert [index[k]["state"] for k in sorted(index)] == ["READY", "READY", "UNAVAILABLE"], index
        assert "--max-loaded-models 2" in index[("b", "1")]["reason"]
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    with running_repository(repo, max_loaded_models=2, **FAST) as url:
        linked_copy(tiny_artifacts, repo / "c")
        refused = _load(url, "c")
        assert refused.status_code == 409 and "--max-loaded-models 2" in refused.json()["error"]
        assert _load(url, "b", "unload").status_code == 200 and _load(url, "c").status_code == 200


def test_the_repository_routes_need_the_api_key(repo):
    key = {"Authorization": "Bearer k3y"}
    with running_repository(repo, api_key="k3y", **FAST) as url:
        for action in ("load", "unload"):
            refused = _load(url, "a", action)
            assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert httpx.post(f"{url}/v2/repository/index").status_code == 401
        assert _load(url, "a", headers=key).status_code == 200
        assert httpx.post(f"{url}/v2/repository/index", headers=key, json={"ready": True}).status_code == 200


def test_the_batcher_takes_a_run_slot_for_each_model_run(monkeypatch):
    from bertdeploy.serve import models

    monkeypatch.setattr(models, "usable_cpus", lambda: 4)
    assert [models.run_slots(t) for t in (None, 4, 8, 2, 3, 1)] == [1, 1, 1, 2, 1, 4]


def test_several_models_only_on_the_local_engine_and_without_a_directory(tmp_path):
    with pytest.raises(BertdeployError, match="multiplexing") as refused:
        ServeOptions(model_repository=tmp_path, engine="ray")
    assert "\n" not in str(refused.value)
    for settings, message in [({}, "either a model directory or --model-repository"),
                              ({"artifact_dir": tmp_path, "model_repository": tmp_path}, "either"),
                              ({"artifact_dir": tmp_path, "poll": 1.0}, "go with --model-repository"),
                              ({"model_repository": tmp_path, "model_name": "x"}, "named by its folder"),
                              ({"model_repository": tmp_path, "poll": 0.0}, "--poll"),
                              ({"model_repository": tmp_path, "version_policy": "first"}, "--version-policy")]:
        with pytest.raises(BertdeployError, match=message):
            ServeOptions(**settings)


def test_the_command_serves_a_repository_and_drains_on_sigterm(repo):
    with serve_command("--model-repository", str(repo), "--variant", "fp32", "--threads", "1", "--drain-delay",
                       "0") as (process, url, log):
        assert _predict(url, model="b").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM), "".join(log)  # uvicorn re-raises the signal
    assert any("serving the model repository" in line and "a 2, b 1" in line for line in log), log
