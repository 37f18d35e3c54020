"""Teachers behind one protocol: the API teacher (FIRE prompt over a real local HTTP server) and the factory from
conf/fire/teacher/*.yaml (the trained teacher runs in test_local_models.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from silkfire.fire.oracle_teacher import OracleTeacher
from silkfire.fire.prompts import TEACHER_INSTRUCTION
from silkfire.fire.teacher import ApiTeacher, Teacher, TeacherInput, build_teacher
from silkfire.fire.text import parse_score
from silkfire.llm.testing import FakeChatServer

ROOT = Path(__file__).resolve().parents[2]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def fake_teacher(body: dict) -> str:
    """Plays GPT-4V: 10 when the student's answer (third user message) ends with the ground truth, else 3."""
    messages = body["messages"]
    truth = _text(messages[0]["content"]).split("Groundtruth: ")[1]
    return "Score: 10.\nFeedback: Correct." if _text(messages[2]["content"]).strip().endswith(truth) else \
        "Score: 3/10.\nFeedback: Look again at the bottom row."


def _client(server: FakeChatServer, **extra: Any) -> dict[str, Any]:
    return {"base_url": server.url, "model": "teacher-x", "api_key_env": None, "timeout_s": 0.5,
            "backoff_base_s": 0.001, "backoff_max_s": 0.01, **extra}


def test_api_teacher_sends_the_fire_prompt_with_the_image(fire_world: Path) -> None:
    item = TeacherInput("<image>\nHow many circles are there?", "2", "Thought: I count.\nAnswer: 2\n",
                        image="images/train-000000.png")
    wrong = TeacherInput("How many circles are there?", "2", "Thought: I count.\nAnswer: 1\n",
                         image="images/train-000000.png")
    with FakeChatServer(fake_teacher, fault_rate=0.4, fault_kinds=("500", "429", "malformed"), seed=2) as server:
        teacher = ApiTeacher(_client(server, max_retries=8))
        assert isinstance(teacher, Teacher)
        turns = teacher.judge([item, wrong], fire_world)
        body = server.requests[0]
    assert [parse_score(turn) for turn in turns] == [10, 3]
    first, instruction, response = body["messages"]
    assert [m["role"] for m in body["messages"]] == ["user"] * 3 and body["temperature"] == 0.0
    assert first["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert _text(first["content"]) == "Question: How many circles are there?\nGroundtruth: 2"
    assert _text(instruction["content"]) == TEACHER_INSTRUCTION and "Do NOT directly tell" in TEACHER_INSTRUCTION
    assert _text(response["content"]).endswith("Answer: 2") or _text(response["content"]).endswith("Answer: 1")
    assert teacher.usage["llm_calls"] == 2 and teacher.usage["llm_retries"] == server.calls - 2


def test_api_teacher_failure_gives_none_and_no_image_when_asked(fire_world: Path) -> None:
    item = TeacherInput("Q?", "a", "Answer: b", image="images/train-000000.png")
    with FakeChatServer(fake_teacher, script=["500"] * 10) as server:
        teacher = ApiTeacher(_client(server, max_retries=1), send_image=False)
        assert teacher.judge([item], fire_world) == [None]
    with FakeChatServer(fake_teacher) as server:
        ApiTeacher(_client(server), send_image=False).judge([item], fire_world)
        assert isinstance(server.requests[0]["messages"][0]["content"], str)


def test_factory_reads_the_conf_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from silkfire.config import compose

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    built = {}
    for kind in ("oracle", "api", "trained"):
        cfg = OmegaConf.to_container(compose([f"fire/teacher={kind}"], root=ROOT).fire.teacher, resolve=True)
        built[kind] = build_teacher(cfg, root=tmp_path)
        assert built[kind].describe()["kind"] == kind
    assert isinstance(built["oracle"], OracleTeacher)
    assert "sk-test-secret" not in str(built["api"].describe())
    assert built["trained"].path == str(tmp_path / "models/fire_teacher/model")
    with pytest.raises(ValueError, match="unknown kind 'judge'"):
        build_teacher({"kind": "judge"})
    with pytest.raises(ValueError, match="unknown key"):
        build_teacher({"kind": "oracle", "temperature": 1})
    with pytest.raises(ValueError, match="needs 'path'"):
        build_teacher({"kind": "trained"})
    with pytest.raises(ValueError, match="base_url and model"):
        build_teacher({"kind": "api"})
