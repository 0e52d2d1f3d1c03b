"""`ipguard verify --url`: suspects behind real HTTP services (MLflow serving's and the Open
Inference Protocol v2's JSON), and what happens when a service fails, lies or runs out of budget.

The services are the tests' own (tests/services.py) on loopback ports, over the digits zoo of
test_cli.py; every fault ends in the documented outcome: the same verdict as the file, a retry,
an `inconclusive` that says why, or one line on stderr with exit status 2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ipguard.cli import main
from ipguard.models import load_model
from ipguard.remote import (
    PredictionService,
    ServiceError,
    ServiceSpec,
    answers_from,
    encode,
    query_plan,
    split_url,
)
from services import Faults, serve
from test_cli import N_NEG, _json, _negatives, _refused, calibrated, digits_folder, raw_set, zoo  # noqa: F401 - fixtures

# ----------------------------------------------------------------------------- the library


def test_answers_are_labels_in_range_or_finite_logits_of_the_right_width() -> None:
    assert answers_from([3, 0, 9], 3, 10, "s").labels.tolist() == [3, 0, 9]
    assert answers_from([[3.0], [1.0]], 2, 10, "s").labels.tolist() == [3, 1]
    a = answers_from([[0.1, 2.0, -1.0], [5.0, 0.0, 0.0]], 2, 3, "s")
    assert a.labels.tolist() == [1, 0] and a.logits is not None and a.logits.dtype == torch.float32
    bad = [
        ([1, 2], 3, "2 predictions for 3 images"),
        ([1, 10, 2], 3, "label 10 is outside 0..9"),
        ([1, -1, 2], 3, "label -1"),
        ([1.5, 2, 3], 3, "labels must be integers"),
        ([[1.0, float("nan")] + [0.0] * 8] * 3, 3, "not all finite"),
        ([[1.0, 2.0]] * 3, 3, "shaped [3, 2]"),
        (["cat", "dog", "cat"], 3, "not numbers"),
        ([[1, 2], [3]], 2, "rectangular"),
        (7, 1, "single value"),
        ([True, False], 2, "not numbers"),
    ]
    for values, n, needle in bad:
        with pytest.raises(ServiceError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            answers_from(values, n, 10, "s")


def test_url_names_its_protocol_and_model() -> None:
    assert split_url("http://h:5000") == ("http://h:5000", None, None)
    assert split_url("http://h:5000/invocations") == ("http://h:5000", "mlflow", None)
    assert split_url("https://h/api/v2/models/resnet/infer") == ("https://h/api", "v2", "resnet")
    assert split_url("http://h:8080/v2/models/m") == ("http://h:8080", "v2", "m")


def test_spec_checks_its_parameters_up_front() -> None:
    for kwargs, needle in [({"url": "ftp://x"}, "--url"), ({"protocol": "grpc"}, "--protocol"),
                           ({"batch_size": 0}, "--batch-size"), ({"timeout": 0}, "--timeout"),
                           ({"retries": -1}, "--retries"), ({"max_queries": 0}, "--max-queries"),
                           ({"mean": [0.5]}, "--mean and --std"), ({"mean": [0.5], "std": [0.0]}, "--std"),
                           ({"uint8": True, "mean": [0.5], "std": [0.2]}, "--uint8")]:
        with pytest.raises(ValueError, match=needle):
            ServiceSpec(**{"url": "http://127.0.0.1:1", **kwargs})


def test_inputs_go_as_float32_pixels_normalised_or_8_bit() -> None:
    x = torch.tensor([[[[0.0, 0.5], [1.0, 0.2]]]])
    assert encode(x, ServiceSpec("http://h")).dtype.name == "float32"
    assert encode(x, ServiceSpec("http://h", uint8=True)).tolist() == [[[[0, 128], [255, 51]]]]
    norm = encode(x, ServiceSpec("http://h", mean=[0.5], std=[0.25]))
    assert norm.tolist() == [[[[-2.0, 0.0], [2.0, -1.2000000476837158]]]]


def test_query_plan_shuffles_repeats_and_puts_twins_in_other_batches() -> None:
    plan = query_plan(100, 16, 0.1, seed=3)
    assert sorted(set(plan)) == list(range(100)) and len(plan) == 110
    assert plan[:100] != sorted(plan[:100])
    twins = [i for i in set(plan) if plan.count(i) == 2]
    assert len(twins) == 10
    for i in twins:
        first, second = [pos for pos, j in enumerate(plan) if j == i]
        assert first // 16 != second // 16, (i, first, second)
    assert query_plan(100, 16, 0.1, seed=3) == plan and query_plan(100, 16, 0.1, seed=4) != plan
    assert len(query_plan(40, 100, 0.0, 0)) == 40


# ----------------------------------------------------------------------------- verify --url


def _url_argv(calibrated: Path, url: str, *extra: str) -> list[str]:
    return ["verify", "--fingerprints", str(calibrated), "--url", url, "--query-seed", "7", "--retries", "2",
            "--backoff", "0", "--timeout", "5", *extra]


@pytest.mark.parametrize("protocol", ["mlflow", "v2"])
@pytest.mark.parametrize("labels_only", [False, True])
def test_a_service_gets_the_verdict_its_file_gets(protocol: str, labels_only: bool, calibrated: Path, zoo: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("copy", f"neg{N_NEG - 1:02d}"):
        path = zoo / f"{name}.safetensors"
        direct = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(path)])
        model, _ = load_model(str(path))
        with serve(model, protocol, faults=Faults(labels_only=labels_only)) as (url, stats):
            extra = ("--model-name", "suspect") if protocol == "v2" else ()
            remote = _json(capsys, _url_argv(calibrated, url, "--batch-size", "16", *extra))
        for key in ("matching_rate", "matches", "p_value", "verdict", "fingerprint_sha256"):
            assert remote[key] == direct[key], key
        assert remote["protocol"] == protocol and remote["url"] == url and remote["retries"] == 0
        assert remote["repeated"] == 4 and remote["changed_answers"] == 0 and remote["model_sha256"] is None
        assert remote["queries"] == stats.images == 44 and remote["requests"] == stats.requests == 3
    assert direct["verdict"] == "independent"


def test_a_busy_service_is_retried_and_every_attempt_counts(calibrated: Path, zoo: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = load_model(str(zoo / "copy.safetensors"))
    with serve(model, faults=Faults(fail_first=2)) as (url, stats):
        result = _json(capsys, _url_argv(calibrated, url, "--repeat-share", "0"))
    assert result["verdict"] == "pirated" and result["retries"] == 2 and stats.requests == 3
    assert result["queries"] == 3 * 40  # two refused attempts of the whole batch, then the answer
    with serve(model, faults=Faults(fail_first=10)) as (url, stats):
        _refused(capsys, _url_argv(calibrated, url, "--repeat-share", "0"), "status 503 after 3 attempts")
    # The budget pays for retries: with room for two attempts, a third is never made.
    with serve(model, faults=Faults(fail_first=10)) as (url, stats):
        result = _json(capsys, _url_argv(calibrated, url, "--repeat-share", "0", "--max-queries", "80"))
    assert result["verdict"] == "inconclusive" and "budget" in result["reason"] and stats.requests == 2
    assert result["queries"] == 80 and result["p_value"] is None


def test_a_slow_service_times_out_and_is_an_error(calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = load_model(str(zoo / "copy.safetensors"))
    with serve(model, faults=Faults(delay=1.5)) as (url, stats):
        _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--url", url, "--timeout", "0.3", "--retries", "1",
                          "--backoff", "0"], "no usable answer after 2 attempts", "Timeout")
    assert stats.requests == 2


@pytest.mark.parametrize(("faults", "needle"), [
    (Faults(drop=1), "predictions for"),
    (Faults(garbage=True), "not JSON"),
    (Faults(token="s3cret"), "refused (401)"),
])
def test_malformed_or_refused_answers_are_errors_never_labels(faults: Faults, needle: str, calibrated: Path, zoo: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = load_model(str(zoo / "copy.safetensors"))
    with serve(model, faults=faults) as (url, _stats):
        _refused(capsys, _url_argv(calibrated, url), needle)


def test_a_token_comes_from_the_environment_and_stays_out_of_the_output(
        calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model(str(zoo / "copy.safetensors"))
    monkeypatch.setenv("SUSPECT_TOKEN", "s3cret")
    with serve(model, faults=Faults(token="s3cret")) as (url, stats):
        capsys.readouterr()
        assert main(_url_argv(calibrated, url, "--header", "Authorization: Bearer ${SUSPECT_TOKEN}", "--json")) == 0
        out = capsys.readouterr().out
    assert json.loads(out)["verdict"] == "pirated" and "s3cret" not in out
    assert all(h.get("Authorization") == "Bearer s3cret" for h in stats.headers)
    monkeypatch.delenv("SUSPECT_TOKEN")
    _refused(capsys, _url_argv(calibrated, "http://127.0.0.1:9", "--header", "Authorization: Bearer $SUSPECT_TOKEN"),
             "SUSPECT_TOKEN is not set")


def test_a_service_that_changes_its_answers_is_inconclusive_not_independent(calibrated: Path, zoo: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = load_model(str(zoo / "copy.safetensors"))
    with serve(model, faults=Faults(random_share=0.5, labels_only=True)) as (url, _stats):
        result = _json(capsys, _url_argv(calibrated, url, "--batch-size", "10", "--repeat-share", "0.5"))
    assert result["verdict"] == "inconclusive" and result["changed_answers"] > 0
    assert "changed its answer" in result["reason"] and result["repeated"] == 20


def test_an_unreachable_or_unknown_service_is_one_line(calibrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--url", "http://127.0.0.1:9", "--timeout", "0.5"],
             "http://127.0.0.1:9", "no answer from /v2/health/ready")
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--url", "localhost:5000"], "--url", "http://")
    _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--url", "http://127.0.0.1:9", "--model", "x"],
             "--url", "one service")
    _refused(capsys, ["verify", "--fingerprints", str(calibrated)], "needs a suspect")


def test_v2_checks_the_model_name_and_its_input_shape(calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = load_model(str(zoo / "copy.safetensors"))
    with serve(model, "v2") as (url, _stats):
        _refused(capsys, _url_argv(calibrated, url), "--model-name")
        _refused(capsys, _url_argv(calibrated, url, "--model-name", "other"), "no model 'other'")
        assert _json(capsys, _url_argv(calibrated, f"{url}/v2/models/suspect"))["verdict"] == "pirated"
    with serve(model, "v2", input_shape=(3, 32, 32)) as (url, _stats):
        _refused(capsys, _url_argv(calibrated, url, "--model-name", "suspect"), "takes inputs [-1, 3, 32, 32]")


def test_uint8_inputs_cost_what_rounding_costs(calibrated: Path, zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ipguard.io import load_fingerprint_set
    from ipguard.verify import score

    model, _ = load_model(str(zoo / "copy.safetensors"))
    inputs, labels, _, _ = load_fingerprint_set(str(calibrated))
    rounded = score(model, (inputs * 255).round() / 255, labels)
    with serve(model, "v2") as (url, _stats):
        result = _json(capsys, _url_argv(calibrated, url, "--model-name", "suspect", "--uint8"))
    assert result["matches"] == rounded.matches


def test_the_service_client_counts_its_queries_under_a_rate_limit(zoo: Path) -> None:
    model, _ = load_model(str(zoo / "copy.safetensors"))
    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    with serve(model) as (url, stats):
        service = PredictionService(ServiceSpec(url, batch_size=5, rate=2.0), 10, (1, 8, 8),
                                    sleep=sleep, clock=lambda: clock[0]).open()
        answers = service.predict(torch.rand(12, 1, 8, 8))
    assert answers.labels.shape == (12,) and service.requests == stats.requests == 3 and service.queries == 12
    assert slept == [0.5, 0.5]


# ----------------------------------------------------------------------------- decoys


@pytest.fixture(scope="module")
def with_decoys(zoo: Path, digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The owner's IPGuard set with 30 decoys from held-out digits, calibrated on neg00..neg11."""
    out = tmp_path_factory.mktemp("decoys") / "fp.safetensors"
    assert main(["fingerprint", "--model", str(zoo / "owner.safetensors"), "--n", "40", "--k", "1", "--data",
                 str(digits_folder), "--data-limit", "100", "--decoys", "30", "--out", str(out)]) == 0
    assert main(["calibrate", "--fingerprints", str(out), "--negatives", *_negatives(zoo)]) == 0
    return out.with_name("fp.calibrated.safetensors")


def test_decoys_are_confident_held_out_images_kept_and_hashed_with_the_set(with_decoys: Path, zoo: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from ipguard.io import load_fingerprint_bundle, save_fingerprint_file

    inputs, labels, outputs, decoys, meta = load_fingerprint_bundle(with_decoys)
    assert decoys is not None and decoys[0].shape == (30, 1, 8, 8) and meta["decoys"] == 30
    owner, _ = load_model(str(zoo / "owner.safetensors"))
    with torch.no_grad():
        top = owner(decoys[0]).softmax(1).max(1).values
        assert torch.equal(owner(decoys[0]).argmax(1), decoys[1])
        assert float(top.min()) > float(owner(inputs).softmax(1).max(1).values.median())
    cal = meta["decoy_calibration"]
    assert cal["n"] == 30 and len(cal["agreements"]) == N_NEG - 1
    copy = _json(capsys, ["verify", "--fingerprints", str(with_decoys), "--model", str(zoo / "copy.safetensors")])
    assert copy["verdict"] == "pirated" and copy["decoys"] == 30 and copy["decoy_agreement"] > 0.9
    # An edited decoy is an altered set.
    tampered = tmp_path / "t.safetensors"
    body = {k: v for k, v in meta.items() if k != "sha256"}
    save_fingerprint_file(tampered, inputs, labels, body, outputs, (decoys[0], decoys[1]))
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tensors = load_file(str(tampered))
    tensors["decoy_labels"] = (tensors["decoy_labels"] + 1) % 10
    with safe_open(str(tampered), framework="pt") as handle:
        header = handle.metadata()
    save_file(tensors, str(tampered), metadata=header)
    _refused(capsys, ["verify", "--fingerprints", str(tampered), "--model", str(zoo / "copy.safetensors")], "altered")


def test_a_service_that_detects_fingerprints_is_inconclusive_with_decoys(with_decoys: Path, calibrated: Path, zoo: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A copy that answers a wrong label wherever its confidence is low (fingerprints lie near the
    boundary; decoys far from it) evades a set without decoys, and not one with them."""
    model, _ = load_model(str(zoo / "copy.safetensors"))
    with serve(model, faults=Faults(msp_below=0.9, labels_only=True)) as (url, _stats):
        plain = _json(capsys, _url_argv(calibrated, url))
        guarded = _json(capsys, _url_argv(with_decoys, url))
    assert plain["verdict"] == "independent" and "decoys" not in plain
    assert guarded["verdict"] == "inconclusive" and "detect fingerprint queries" in guarded["reason"], guarded
    assert guarded["decoy_agreement"] == 1.0 and guarded["queries"] == 70 + 7
    with serve(model) as (url, _stats):  # the honest copy behind the same service
        assert _json(capsys, _url_argv(with_decoys, url))["verdict"] == "pirated"


def _beta_binomial(gen: Any, mean: float, kappa: float, n: int, size: int) -> list[int]:
    return [int(c) for c in gen.binomial(n, gen.beta(mean * kappa, (1 - mean) * kappa, size=size))]


def test_answers_below_every_independent_model_are_inconclusive_not_independent() -> None:
    """Where independent models match many points (real starts: about half), a service that answers
    most fingerprint queries wrongly matches fewer than any of them would: that is no evidence of
    independence. Fresh independent models from the same null are rarely caught by it, and where
    independent models match almost nothing the rule cannot fire."""
    import numpy as np

    from ipguard.decoys import judge_low_matches

    gen = np.random.default_rng(0)
    n, level = 100, 0.01
    negatives = _beta_binomial(gen, 0.55, 60, n, 30)
    why = judge_low_matches(20, n, negatives, level)  # the autoencoder service of service_answers: 0.20
    assert why is not None and "fewer than independent models would" in why and "20/100" in why
    assert judge_low_matches(min(negatives), n, negatives, level) is None
    assert judge_low_matches(55, n, negatives, level) is None
    fresh = _beta_binomial(gen, 0.55, 60, n, 400)
    caught = sum(judge_low_matches(c, n, negatives, level) is not None for c in fresh) / len(fresh)
    assert caught <= 0.03, caught
    low = _beta_binomial(gen, 0.05, 60, n, 30)  # noise starts: independents match ~5 %
    assert judge_low_matches(0, n, low, level) is None
    assert judge_low_matches(0, n, [], level) is None


# ----------------------------------------------------------------------------- many suspects at once


def test_many_suspects_in_one_process_one_line_each(calibrated: Path, zoo: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(zoo / "copy.safetensors"), str(zoo / f"neg{N_NEG - 1:02d}.safetensors")]
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    capsys.readouterr()
    assert main(["verify", "--fingerprints", str(calibrated), "--model", *files, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["verdict"] for r in lines] == ["pirated", "independent"] and [r["file"] for r in lines] == files
    single = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", files[0]])
    assert {k: v for k, v in single.items() if k != "file"} == {k: v for k, v in lines[0].items() if k != "file"}
    # A broken file among them: its own error line, the others still checked, exit status 2.
    assert main(["verify", "--fingerprints", str(calibrated), "--model", files[0], str(broken), files[1], "--json"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["verdict"] for r in lines] == ["pirated", None, "independent"] and str(broken) in lines[1]["error"]
    # The public zoo's manifest format.
    manifest = zoo / "public" / "manifest.json"
    assert main(["verify", "--fingerprints", str(calibrated), "--models-manifest", str(manifest)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["pub0", "pub1", "pub2", "pub3"]
    assert all("independent" in line or "inconclusive" in line for line in out), out


def test_suspects_checked_in_parallel_threads_give_the_same_lines_in_order(calibrated: Path, zoo: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    manifest = str(zoo / "public" / "manifest.json")
    argv = ["verify", "--fingerprints", str(calibrated), "--models-manifest", manifest,
            "--model", str(zoo / "copy.safetensors"), str(zoo / "missing.safetensors")]
    threads = torch.get_num_threads()
    capsys.readouterr()
    assert main([*argv, "--json"]) == 2
    serial = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*argv, "--json", "--jobs", "3"]) == 2
    parallel = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert parallel == serial and len(serial) == 6 and serial[0]["verdict"] == "pirated"
    assert "missing.safetensors" in serial[1]["error"]
    assert torch.get_num_threads() == threads  # given back after the pool
    _refused(capsys, [*argv, "--jobs", "0"], "--jobs")


def test_a_hub_splits_into_shards_each_suspect_once(calibrated: Path, zoo: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    manifest = zoo / "public" / "manifest.json"
    out = tmp_path / "verdicts"
    proc = subprocess.run(
        [sys.executable, "-m", "ipguard.hub", "-m", f"fingerprints={calibrated}", f"manifest={manifest}", "shards=2",
         "shard=0,1", f"out_dir={out}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, IPGUARD_PROGRESS="0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = [[json.loads(line) for line in (out / f"shard-{i}.jsonl").read_text().splitlines()] for i in (0, 1)]
    assert [r["model"] for r in shards[0]] == ["pub0", "pub2"] and [r["model"] for r in shards[1]] == ["pub1", "pub3"]
    whole = _json_lines(capsys, ["verify", "--fingerprints", str(calibrated), "--models-manifest", str(manifest)])
    assert sorted(shards[0] + shards[1], key=lambda r: r["model"]) == whole
    for bad in ("2/2", "1", "a/b", "0/0"):
        _refused(capsys, ["verify", "--fingerprints", str(calibrated), "--models-manifest", str(manifest), "--shard", bad],
                 "--shard")


def _json_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# ----------------------------------------------------------------------------- a real MLflow server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_served(zoo: Path, tmp_path: Path) -> Iterator[str]:
    """`mlflow models serve --env-manager local` over the copy, saved by ipguard.serving; the
    process group is killed on leaving, whatever happened."""
    from ipguard.serving import save_mlflow_model

    model_dir = save_mlflow_model(zoo / "copy.safetensors", tmp_path / "mlflow-model")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*cmd, "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1",
                             "-p", str(port), "-w", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, MLFLOW_TRACKING_URI=f"file:{tmp_path / 'mlruns'}"))
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not come up: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_real_mlflow_serving_gets_the_verdict_of_the_file(mlflow_served: str, calibrated: Path, zoo: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    direct = _json(capsys, ["verify", "--fingerprints", str(calibrated), "--model", str(zoo / "copy.safetensors")])
    remote = _json(capsys, _url_argv(calibrated, mlflow_served, "--batch-size", "16"))
    assert remote["protocol"] == "mlflow" and remote["retries"] == 0 and remote["changed_answers"] == 0
    for key in ("matching_rate", "matches", "p_value", "verdict"):
        assert remote[key] == direct[key], key
    assert remote["verdict"] == "pirated" and remote["queries"] == 44
