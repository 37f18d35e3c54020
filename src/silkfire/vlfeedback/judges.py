"""Judges: annotate VLFeedback records (row form) with the 3 aspects -- the oracle or an API model -- by config.

    from silkfire.vlfeedback.judges import make_judge
    judge = make_judge(cfg.silkie.judge, world_dir=root / cfg.paths.world, root=root)
    annotated = judge.annotate(records, image_root=root / cfg.paths.world)   # copies, annotations filled
    mlflow.log_params(judge.params()); mlflow.log_metrics(judge.metrics())

Every judge implements :class:`Judge`: ``annotate(records, image_root)`` takes row-form records
(:func:`silkfire.vlfeedback.records.read_feedback`; each with up to 4 completions, ``annotations`` missing/None
or present -- they are replaced) and returns new records whose completions carry ``annotations`` exactly as
published: ``{"Helpfulness": {"Rating": "4", "Rationale": "..."}, "Ethical Considerations": {...},
"Visual Faithfulness": {...}}`` (ratings are strings; "N/A" when the judge gave none).

- ``kind: oracle`` -> :class:`silkfire.vlfeedback.oracle_judge.OracleJudge` (rules in its module docstring); needs
  ``world_dir``.
- ``kind: fire_teacher`` -> :class:`silkfire.vlfeedback.teacher_judge.TeacherJudge`: a FIRE teacher (the trained
  one by default) scores each response against the record's reference answer; Helpfulness only.
- ``kind: api`` -> :class:`ApiJudge`: one chat call per record (image as a data URL + the annotation prompt
  of :mod:`silkfire.vlfeedback.template` with all responses), replies parsed per aspect/text, a persistent
  :class:`silkfire.vlfeedback.cache.AnnotationCache` (``cache_dir``) so a re-run or a resume after a crash never
  pays twice; the client (and its API key) is only created when some record is not cached. Calls that still
  fail after the client's retries: ``on_failure: raise`` (default) raises :class:`JudgeError` after every other
  reply is cached (re-run to resume); ``on_failure: na`` fills "N/A" ratings (pairs skip them).
  Only replies that parse into every rating are cached as answers: an unparsable reply (a refusal, an
  off-format or truncated text) gives this run's "N/A" ratings (their rationale says so), goes to the cache's
  side record and is asked again on the next run, at most ``max_unparsable_attempts`` (default 3) replies per
  record across runs; after that the record stays "N/A" without a call and the rationale names the bound. A
  cached answer that does not parse (a cache written before this rule) is not a hit: it is asked again.

Metrics (``judge_*``): records, completions, cache_hits, cache_misses, failed, na_ratings, unparsable (replies
this run that did not parse), retried (records asked again after an unparsable reply), unparsable_given_up
(records left "N/A" without a call: the attempts bound is reached) + the client's
``judge_requests``, ``judge_calls``, ``judge_retries``, ``judge_prompt_tokens``, ``judge_completion_tokens``,
``judge_cost_usd``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from silkfire.vlfeedback.cache import AnnotationCache, annotation_key, image_digest
from silkfire.vlfeedback.template import NA, TEMPLATE_VERSION, na_count, parse_annotation, render_prompt
from silkfire.images import CheckedImage, UnsafeImage, check_image
from silkfire.llm.client import ApiError, ChatClient, ClientConfig, user_message

# the api judge's keys that are not its client's settings ("reads": the annotate stage's DVC dep, every judge has it)
API_KEYS = ("kind", "reads", "cache_dir", "template_file", "template_version", "on_failure", "chunk_size",
            "max_unparsable_attempts")
MAX_UNPARSABLE_ATTEMPTS = 3


class JudgeError(RuntimeError):
    """Some records could not be annotated; the message names them (the rest is cached)."""


@runtime_checkable
class Judge(Protocol):
    """Annotates records; see the module docstring."""

    name: str

    def annotate(self, records: Sequence[Mapping[str, Any]], image_root: str | Path | None = None
                 ) -> list[dict[str, Any]]: ...

    def params(self) -> dict[str, Any]: ...

    def metrics(self) -> dict[str, float]: ...


def readable(text: str, n_texts: int) -> bool:
    """Whether a judge reply parses into a numeric rating for every text and aspect (an answer worth caching)."""
    return na_count(parse_annotation(text, n_texts)) == 0


def _noted(parsed: list[dict[str, dict[str, str]]], note: str) -> list[dict[str, dict[str, str]]]:
    """``parsed`` with ``note`` in front of the rationale of every "N/A" rating."""
    return [{aspect: ({"Rating": NA, "Rationale": f"{note} {value['Rationale']}".strip()}
                      if value["Rating"] == NA else value) for aspect, value in item.items()} for item in parsed]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class ApiJudge:
    """An OpenAI-compatible model as the VLFeedback judge (GPT-4V in the paper)."""

    name = "api"

    def __init__(self, client_config: ClientConfig, cache_dir: str | Path, *, template: str | None = None,
                 template_version: str = TEMPLATE_VERSION, on_failure: str = "raise", chunk_size: int = 256,
                 progress: bool = False, client_factory: Callable[[ClientConfig], ChatClient] = ChatClient,
                 max_unparsable_attempts: int = MAX_UNPARSABLE_ATTEMPTS) -> None:
        if on_failure not in ("raise", "na"):
            raise ValueError(f"api judge: on_failure must be 'raise' or 'na', got {on_failure!r}")
        if isinstance(max_unparsable_attempts, bool) or not isinstance(max_unparsable_attempts, int) \
                or max_unparsable_attempts < 1:
            raise ValueError("api judge: max_unparsable_attempts must be an integer >= 1, got "
                             f"{max_unparsable_attempts!r}")
        self.max_unparsable_attempts = max_unparsable_attempts
        self.client_config = client_config
        self.cache = AnnotationCache(cache_dir)
        self.template = template
        self.template_version = template_version
        self.on_failure = on_failure
        self.chunk_size = max(1, chunk_size)
        self.progress = progress
        self._client_factory = client_factory
        self._client: ChatClient | None = None
        self._counts = {"records": 0, "completions": 0, "cache_hits": 0, "cache_misses": 0, "failed": 0,
                        "na_ratings": 0, "unparsable": 0, "retried": 0, "unparsable_given_up": 0}

    def params(self) -> dict[str, Any]:
        return {"judge": self.name, "judge_template_version": self.template_version,
                **{key.replace("llm_", "judge_"): value for key, value in self.client_config.params().items()}}

    def metrics(self) -> dict[str, float]:
        usage = self._client.usage.metrics("judge_") if self._client is not None else {}
        return {**{f"judge_{key}": value for key, value in self._counts.items()}, **usage}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _image(self, record: Mapping[str, Any], image_root: str | Path | None, index: int) -> CheckedImage:
        """The record's image through the path policy (inside `image_root`, a real image under the pixel limit)."""
        if image_root is None:
            raise ValueError(f"api judge: record {index} (id {record.get('id')!r}): no image root given; image "
                             "paths are read only relative to one")
        try:
            return check_image(image_root, record.get("img_path"))
        except UnsafeImage as error:
            raise UnsafeImage(error.relative, error.root, f"api judge: record {index} (id {record.get('id')!r}), "
                              f"field img_path: {error.reason}") from None

    def annotate(self, records: Sequence[Mapping[str, Any]], image_root: str | Path | None = None
                 ) -> list[dict[str, Any]]:
        model = self.client_config.model
        keys: list[str] = []
        todo: dict[str, tuple[int, CheckedImage]] = {}  # key -> (first record index, image); duplicates share one call
        given_up: dict[str, str] = {}  # key -> the last unparsable reply (the attempts bound is reached)
        for index, record in enumerate(records):
            image = self._image(record, image_root, index)
            responses = [completion["response"] for completion in record["completions"]]
            key = annotation_key(model, self.template_version, record["prompt"], image_digest(image.path), responses)
            keys.append(key)
            n = len(responses)
            if self.cache.get(key, lambda entry, n=n: readable(str(entry.get("text", "")), n)) is not None:
                self._counts["cache_hits"] += 1
            elif key in todo or key in given_up:
                continue
            elif self.cache.attempts(key) >= self.max_unparsable_attempts:
                last = self.cache.last_unparsable(key)
                given_up[key] = str(last.get("text", "")) if last else ""
                self._counts["unparsable_given_up"] += 1
            else:
                todo[key] = (index, image)
                if self.cache.attempts(key) or key in self.cache:  # an unparsable reply before (side record or
                    self._counts["retried"] += 1                   # an old cache that held it as an answer)
        self._counts["cache_misses"] += len(todo)
        failed, unparsable = self._call(records, todo) if todo else ({}, {})
        out = []
        for index, (record, key) in enumerate(zip(records, keys)):
            n = len(record["completions"])
            entry = self.cache.get(key, lambda entry, n=n: readable(str(entry.get("text", "")), n))
            if entry is not None:
                parsed = parse_annotation(entry["text"], n)
            elif key in unparsable:
                attempt = self.cache.attempts(key)
                parsed = _noted(parse_annotation(unparsable[key], n),
                                f"[judge reply unparsable (attempt {attempt} of {self.max_unparsable_attempts}): "
                                "not cached, asked again on the next run]")
            elif key in given_up:
                parsed = _noted(parse_annotation(given_up[key], n),
                                f"[judge reply unparsable in {self.cache.attempts(key)} attempts "
                                f"(max_unparsable_attempts={self.max_unparsable_attempts}): not asked again]")
            else:
                why = failed.get(key, "no reply")
                parsed = [{aspect: {"Rating": NA, "Rationale": f"[judge call failed: {why}]"} for aspect in
                           ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")} for _ in range(n)]
            self._counts["na_ratings"] += na_count(parsed)
            completions = [dict(completion, annotations=notes) for completion, notes in
                           zip(record["completions"], parsed)]
            out.append({**record, "completions": completions})
            self._counts["records"] += 1
            self._counts["completions"] += n
        if failed and self.on_failure == "raise":
            ids = [str(records[todo[key][0]].get("id")) for key in failed]
            raise JudgeError(f"api judge: {len(failed)} record(s) not annotated after retries (first: {ids[:5]}; "
                             f"{failed[next(iter(failed))]}); the {len(self.cache)} cached annotations are kept: "
                             "re-run to resume (or set on_failure: na)")
        return out

    def _call(self, records: Sequence[Mapping[str, Any]], todo: dict[str, tuple[int, Path]]
              ) -> tuple[dict[str, str], dict[str, str]]:
        """Ask the model for every uncached key; each readable reply is cached as it arrives, each unparsable one
        goes to the side record. Returns (key -> error, key -> unparsable reply text)."""
        if self._client is None:
            self._client = self._client_factory(self.client_config)
        failed: dict[str, str] = {}
        unparsable: dict[str, str] = {}
        items = list(todo.items())
        bar = tqdm(total=len(items), desc="api judge", unit="record", disable=not self.progress)
        for chunk in _chunks(items, self.chunk_size):  # bounded memory: images are encoded per chunk
            requests = []
            for key, (index, image) in chunk:
                record = records[index]
                text = render_prompt(record["prompt"], [c["response"] for c in record["completions"]],
                                     self.template)
                requests.append([user_message(text, images=[image])])
            for position, outcome in self._client.chat_many(requests):
                key, (index, _) = chunk[position]
                if isinstance(outcome, ApiError):
                    self._counts["failed"] += 1
                    failed[key] = str(outcome)
                else:
                    entry = {"key": key, "id": records[index].get("id"), "model": self.client_config.model,
                             "template": self.template_version, "text": outcome.text,
                             "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens}
                    if readable(outcome.text, len(records[index]["completions"])):
                        self.cache.put(entry)
                    else:  # not an answer: kept aside (counted toward the bound), asked again next run
                        self._counts["unparsable"] += 1
                        self.cache.put_unparsable(entry)
                        unparsable[key] = outcome.text
                bar.update(1)
        bar.close()
        return failed, unparsable


def make_judge(cfg: Mapping[str, Any], *, world_dir: str | Path | None = None, root: str | Path = ".",
               progress: bool = False) -> Judge:
    """A judge from its config group (conf/silkie/judge/oracle.yaml | api.yaml | fire_teacher.yaml); paths
    relative to ``root``."""
    from silkfire.vlfeedback.oracle_judge import OracleJudge, OracleRules

    data = _plain(cfg)
    kind = data.pop("kind", None)
    if kind == "oracle":
        if world_dir is None:
            raise ValueError("oracle judge: needs the world folder (world_dir) to read scene graphs")
        return OracleJudge.from_world(world_dir, OracleRules.from_mapping(data), progress=progress)
    if kind == "api":
        root = Path(root)
        cache_dir = data.pop("cache_dir", None)
        if not cache_dir:
            raise ValueError("api judge: cache_dir is required (annotations are cached so no call is paid twice)")
        template_file = data.pop("template_file", None)
        template = (root / template_file).read_text(encoding="utf-8") if template_file else None
        version = data.pop("template_version", None)
        if not version:  # a custom template gets its own cache namespace unless a version is given
            version = (TEMPLATE_VERSION if template is None
                       else "file-" + hashlib.sha256(template.encode("utf-8")).hexdigest()[:16])
        on_failure = str(data.pop("on_failure", "raise"))
        chunk_size = int(data.pop("chunk_size", 256))
        attempts = data.pop("max_unparsable_attempts", None)
        return ApiJudge(ClientConfig.from_mapping(data), root / cache_dir, template=template,
                        template_version=str(version), on_failure=on_failure, chunk_size=chunk_size, progress=progress,
                        max_unparsable_attempts=MAX_UNPARSABLE_ATTEMPTS if attempts is None else attempts)
    if kind == "fire_teacher":
        from silkfire.vlfeedback.teacher_judge import make_teacher_judge

        return make_teacher_judge(data, world_dir=world_dir, root=root)
    raise ValueError(f"judge: unknown kind {kind!r}; use 'oracle', 'api' or 'fire_teacher' (conf/silkie/judge/)")


def judge_shard(records: list[dict[str, Any]], *, judge: dict[str, Any], world_dir: str | None, root: str,
                image_root: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One shard annotated by a judge built here from its plain config (never an open client shipped to a
    worker); returns the records and ``{"metrics": judge.metrics(), "params": judge.params()}``. What the
    `annotate` stage fans out (silkfire.fanout.fan_out_shards pickles it to the workers)."""
    built = make_judge(dict(judge), world_dir=Path(world_dir) if world_dir else None, root=Path(root))
    try:
        annotated = list(built.annotate(records, image_root=image_root))
    finally:
        close = getattr(built, "close", None)
        if callable(close):
            close()
    return annotated, {"metrics": built.metrics(), "params": built.params()}


def annotate_shard(records: list[dict[str, Any]], *, judge: Mapping[str, Any], world_dir: str | None,
                   root: str, image_root: str | None) -> list[dict[str, Any]]:
    """The records of :func:`judge_shard` alone: the ``fn`` form :func:`silkfire.fanout.fan_out` takes."""
    return judge_shard(records, judge=judge, world_dir=world_dir, root=root, image_root=image_root)[0]


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The judge's settings as a plain dict, without ``reads`` (a DVC dep of the annotate stage, not a setting;
    left unresolved: a conf file loaded alone has no ``paths``)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):  # values read in place, so interpolations resolve against the whole config
            return {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                    for key in cfg if key != "reads" for value in [cfg[key]]}
    except ImportError:  # pragma: no cover
        pass
    return {key: value for key, value in cfg.items() if key != "reads"}
