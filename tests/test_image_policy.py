"""The image path policy against hostile records: no byte of a file outside the image root reaches a server or a
model, and a decompression bomb is refused from its header, for every reader of images (silkfire.images)."""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from silkfire.images import DEFAULT_MAX_PIXELS, UnsafeImage, check_image, load_image
from silkfire.io import write_jsonl
from silkfire.llm.testing import FakeChatServer

SECRET = b"root:x:0:0:secret-marker-1b7e\n"
ROOT = Path(__file__).resolve().parents[1]


def png_of_size(path: Path, width: int, height: int) -> None:
    """A valid, all-black 1-bit PNG of width x height, written row by row (a 144-Mpx image is ~20 KB on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    packer = zlib.compressobj(1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture()
def attack(tmp_path: Path) -> dict:
    """An image root with one good image and every attack of issue 13, and a secret file outside the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "passwd"
    secret.write_bytes(SECRET)
    Image.new("RGB", (8, 8), "red").save(outside / "secret.png")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16), "blue").save(root / "images" / "good.png")
    (root / "images" / "link.png").symlink_to(secret)
    (root / "images" / "link_png.png").symlink_to(outside / "secret.png")
    os.mkfifo(root / "images" / "pipe.png")
    png_of_size(root / "images" / "bomb.png", 12_000, 12_000)  # 144 Mpx
    depth = len(root.resolve().parts)
    paths = {
        "absolute": str(secret),
        "etc_passwd": "/etc/passwd",
        "dotdot": "../" * depth + str(secret).lstrip("/"),
        "dotdot_image": "../outside/secret.png",
        "symlink": "images/link.png",
        "symlink_image": "images/link_png.png",
        "nul": "images/good.png\x00../../outside/passwd",
        "fifo": "images/pipe.png",
        "bomb": "images/bomb.png",
        "missing": "images/none.png",
    }
    return {"root": root, "paths": paths, "secret": secret}


REASONS = {
    "absolute": "absolute path", "etc_passwd": "absolute path", "dotdot": "escapes the data root through '..'",
    "dotdot_image": "escapes the data root through '..'", "symlink": "symlink points outside the data root",
    "symlink_image": "symlink points outside the data root", "nul": "NUL byte in path", "fifo": "not a file",
    "bomb": "image too large: 12000x12000 = 144000000 pixels", "missing": "file not found",
}


def test_every_attack_is_refused_with_its_reason(attack: dict) -> None:
    for name, relative in attack["paths"].items():
        with pytest.raises(UnsafeImage) as caught:
            check_image(attack["root"], relative)
        assert REASONS[name] in caught.value.reason, name
    assert check_image(attack["root"], "images/good.png").load().size == (16, 16)


def test_the_bomb_is_refused_from_its_header(attack: dict) -> None:
    """144 Mpx > the 36 Mpx default: refused before decoding (a full decode took ~700 MB), and accepted only when
    the limit is raised on purpose."""
    assert (attack["root"] / "images/bomb.png").stat().st_size < 100_000
    started = time.perf_counter()
    with pytest.raises(UnsafeImage, match="raise images.max_pixels"):
        check_image(attack["root"], "images/bomb.png")
    assert time.perf_counter() - started < 1.0
    assert 144_000_000 > DEFAULT_MAX_PIXELS
    assert check_image(attack["root"], "images/bomb.png", limit=200_000_000).width == 12_000


def test_model_readers_never_open_a_file_outside_the_root(attack: dict) -> None:
    """What the HF policies, evaluation, SFT/DPO encoding and the FIRE dialogue loop call to read pixels."""
    from silkfire.train.data import load_image as training_load_image

    for relative in attack["paths"].values():
        with pytest.raises(UnsafeImage):
            training_load_image(attack["root"], relative)
        with pytest.raises(UnsafeImage):
            load_image(attack["root"], relative)


def _no_secret_reached(server: FakeChatServer) -> None:
    import base64

    sent = repr(server.requests).encode()
    assert SECRET not in sent and base64.b64encode(SECRET)[:16] not in sent


def test_api_judge_sends_nothing_when_any_record_is_unsafe(attack: dict, tmp_path: Path) -> None:
    from silkfire.vlfeedback.judges import ApiJudge
    from silkfire.llm.client import ClientConfig

    good = {"id": "ok", "prompt": "What is it?", "img_path": "images/good.png",
            "completions": [{"model": m, "response": "A square."} for m in ("a", "b")]}
    with FakeChatServer("Rating: 4") as server:
        for name, relative in attack["paths"].items():
            judge = ApiJudge(ClientConfig(base_url=server.url, model="judge", api_key_env=None),
                             cache_dir=tmp_path / "cache")
            with pytest.raises(UnsafeImage, match="record 1 .*field img_path"):
                judge.annotate([good, dict(good, id=name, img_path=relative)], image_root=attack["root"])
            judge.close()
        assert server.calls == 0
        _no_secret_reached(server)


def test_api_policy_and_fire_api_roles_send_nothing(attack: dict) -> None:
    from silkfire.fire.students import ApiStudent, StudentInput
    from silkfire.fire.teacher import ApiTeacher, TeacherInput
    from silkfire.policies.api import APIPolicy
    from silkfire.policies.base import Instruction, PolicyError

    with FakeChatServer("A blue square.") as server:
        client = {"base_url": server.url, "model": "m", "api_key_env": None}
        policy = APIPolicy("gpt", **client)
        student, teacher = ApiStudent(client), ApiTeacher(client)
        for name, relative in attack["paths"].items():
            with pytest.raises(PolicyError, match=f"instruction '{name}', field img_path"):
                policy.respond([Instruction(id="good", prompt="?", image="images/good.png"),
                                Instruction(id=name, prompt="?", image=relative)], attack["root"], seed=0)
            with pytest.raises(UnsafeImage):
                student.respond([StudentInput(id=name, image=relative, question="What?")], attack["root"])
            with pytest.raises(UnsafeImage):
                teacher.judge([TeacherInput(question="What?", groundtruth="A.", response="B.", image=relative)],
                              attack["root"])
        assert server.calls == 0
        assert policy.respond([Instruction(id="good", prompt="?", image="images/good.png")], attack["root"],
                              seed=0) == ["A blue square."]
        assert server.calls == 1
        _no_secret_reached(server)


def test_sample_stage_refuses_an_external_prompts_file_before_any_request(attack: dict, mlflow_root: Path) -> None:
    """silkie.sample.source=vlfeedback with every attack in the prompts file: the stage stops naming each record
    and field, and the endpoint received nothing."""
    from silkfire.config import compose
    from silkfire.stages.runner import run_stage

    root = mlflow_root
    os.symlink(attack["root"], root / "vlf")
    prompts = [{"id": "good", "prompt": "What?", "img_path": "images/good.png"}]
    prompts += [{"id": name, "prompt": "What?", "img_path": relative} for name, relative in attack["paths"].items()]
    write_jsonl(root / "prompts.jsonl", prompts)
    with FakeChatServer("A blue square.") as server:
        cfg = compose(["experiment=silkie", "silkie.sample.source=vlfeedback", "silkie.sample.prompts=prompts.jsonl",
                       "silkie.sample.image_root=vlf", "silkie.sample.responses=1", "silkie.sample.progress=false",
                       "~silkie.sample.pool",
                       f"+silkie.sample.pool.gpt={{kind: api, base_url: '{server.url}', model: gpt-4o}}"], ROOT)
        OmegaConf.save(cfg, root / "params.yaml")
        with pytest.raises(ValueError) as caught:
            run_stage("sample", root)
        assert server.calls == 0
    message = str(caught.value)
    assert f"{len(attack['paths'])} prompt(s) name images the image policy refuses" in message
    for name in attack["paths"]:
        assert f"id {name!r}, field img_path" in message
    assert not (root / "data/feedback/samples.jsonl").exists()


def test_gates_report_every_unsafe_path_with_its_line(attack: dict, tmp_path: Path) -> None:
    """The vlfeedback gate (what validate_feedback runs): one failing row per attack, each with its reason."""
    from silkfire.quality import QualityConfig
    from silkfire.quality.cli import validate

    aspects = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
    completion = {"model": "m", "response": "A square.",
                  "annotations": {a: {"Rating": "4", "Rationale": "fine"} for a in aspects}}
    rows = [{"id": name, "prompt": "What?", "models": ["m"] * 4, "img_path": relative,
             "completions": [completion] * 4} for name, relative in [("good", "images/good.png"),
                                                                      *attack["paths"].items()]]
    write_jsonl(tmp_path / "feedback.jsonl", rows)
    result = validate("vlfeedback", tmp_path / "feedback.jsonl", QualityConfig(data_docs=False, max_examples=20), tmp_path / "report",
                      attack["root"])
    assert not result.success and "(10 failing)" in result.to_markdown()
    text = str(result.failure_rows(max_examples=20))
    for reason in ("absolute path", "escapes the data root", "symlink points outside", "NUL byte in path",
                   "not a file", "image too large", "file not found"):
        assert reason in text, reason
    assert "feedback.jsonl:2 " in text and "feedback.jsonl:11 " in text  # the file's lines, first and last attack


def test_validate_command_reports_a_nul_byte_path_with_its_line(attack: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`silkfire validate` used to stop with 'embedded null byte' (exit 2, no line, other rows unreported)."""
    from silkfire.cli import main

    aspects = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
    completion = {"model": "m", "response": "A square.",
                  "annotations": {a: {"Rating": "4", "Rationale": "fine"} for a in aspects}}
    rows = [{"id": str(i), "prompt": f"What {i}?", "models": ["m"] * 4, "img_path": path, "completions": [completion] * 4}
            for i, path in enumerate(["images/good.png", attack["paths"]["nul"], attack["paths"]["dotdot"]])]
    write_jsonl(tmp_path / "f.jsonl", rows)
    code = main(["validate", "vlfeedback", str(tmp_path / "f.jsonl"), "--image-root", str(attack["root"]),
                 "--report-dir", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 1
    assert "f.jsonl:2  img_path -> 'NUL byte in path'" in out
    assert "f.jsonl:3  img_path -> \"path escapes the data root through '..'\"" in out
