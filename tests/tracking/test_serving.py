"""Registered models are MLflow pyfunc models: loaded with mlflow.pyfunc, served by `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from silkfire.serving import BadRequest, decode_image, example_image
from silkfire.tracking.registry import REGISTERED_TAG, hf_model_dir, log_and_register
from silkfire.tracking.store import configure, tracking_uri

NAME = "silkfire-sft"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.models.testing import make_test_world

    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=1, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.models.testing import make_test_model

    return make_test_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def champion(mlflow_root: Path, tiny_model: Path) -> int:
    """The tiny model registered as silkfire-sft (candidate), then promoted to champion."""
    configure(mlflow_root, "exp")
    with mlflow.start_run():
        version = log_and_register(tiny_model, NAME, "candidate")
    MlflowClient().set_registered_model_alias(NAME, "champion", str(version))
    return version


def _question(world: Path) -> tuple[bytes, str]:
    record = json.loads((world / "mme.jsonl").read_text().splitlines()[0])
    return (world / record["image"]).read_bytes(), record["question"]


def _direct_answer(model_dir: Path, image: bytes, question: str, max_new_tokens: int) -> str:
    """What the project's own loader and greedy generation answer (no MLflow in between)."""
    from PIL import Image

    from silkfire.eval.answers import generate_batch, generation_mode
    from silkfire.models.loading import load_vlm
    from silkfire.train.data import prompt_text

    model, processor = load_vlm(model_dir, device="cpu")
    with generation_mode(model, processor):
        return generate_batch(model, processor, [prompt_text(processor, question)],
                              [Image.open(io.BytesIO(image)).convert("RGB")], max_new_tokens=max_new_tokens)[0]


def test_registered_version_is_a_pyfunc_with_signature_and_example(champion: int, mlflow_root: Path,
                                                                  world: Path, tiny_model: Path) -> None:
    client = MlflowClient()
    version = client.get_model_version(NAME, str(champion))
    assert version.source.startswith("models:/m-")
    run = client.get_run(version.run_id)
    assert run.data.tags[REGISTERED_TAG] == f"{NAME}/{champion}"  # no alias: it would go stale
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    schema = model.metadata.signature
    assert [c.name for c in schema.inputs.inputs] == ["image", "question"]
    assert [c.name for c in schema.outputs.inputs] == ["answer"]
    assert model.metadata.saved_input_example_info is not None
    assert model.metadata.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    # Weights stay safetensors, and nothing pickled travels with the model.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(mlflow_root / "dl")))
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.bin"))
    assert (hf_model_dir(local) / "model.safetensors").is_file()

    image, question = _question(world)
    answers = model.predict({"image": [image, base64.b64encode(image).decode()], "question": [question] * 2},
                            params={"max_new_tokens": 6})
    expected = _direct_answer(tiny_model, image, question, 6)
    assert list(answers) == [expected, expected]


def test_requests_are_images_never_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(example_image())
    with pytest.raises(BadRequest, match="not an image|cannot decode|base64"):
        decode_image(str(secret))  # a path is not base64 image data: refused, the file is never opened
    with pytest.raises(BadRequest, match="cannot decode"):
        decode_image(b"not an image at all")
    monkeypatch.setenv("SILKFIRE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(BadRequest, match="too large"):
        decode_image(example_image())  # 48x48 = 2304 pixels > 100
    monkeypatch.delenv("SILKFIRE_MAX_IMAGE_PIXELS")
    assert decode_image(example_image()).size == (48, 48)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_served_champion_answers_an_image_question_over_http(champion: int, mlflow_root: Path, world: Path,
                                                             tiny_model: Path) -> None:
    import httpx

    port = _free_port()
    uri = tracking_uri(mlflow_root)
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "HF_HUB_OFFLINE": "1",
                        "SILKFIRE_SERVE_DEVICE": "cpu",  # mlflow starts `uvicorn` from PATH: the environment's
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{NAME}@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    server = subprocess.Popen(command, env=env, cwd=mlflow_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"mlflow models serve did not start:\n{server.stdout.read()[-4000:]}")
            time.sleep(0.5)
        image, question = _question(world)
        payload = {"dataframe_split": {"columns": ["image", "question"],
                                       "data": [[base64.b64encode(image).decode(), question]]},
                   "params": {"max_new_tokens": 6}}
        response = httpx.post(f"{base}/invocations", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert answers == [_direct_answer(tiny_model, image, question, 6)]
        # A request that names a file instead of carrying an image is refused, and the server keeps serving.
        bad = {"dataframe_split": {"columns": ["image", "question"], "data": [["/etc/passwd", question]]}}
        assert httpx.post(f"{base}/invocations", json=bad, timeout=60).status_code >= 400
        assert httpx.get(f"{base}/ping", timeout=5).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
