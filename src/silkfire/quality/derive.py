"""Checks Great Expectations cannot express, computed in Python as derived columns of the frame.

Each helper returns one value per row: "ok" or a short reason (or a count), and None where the row has
nothing to check (a null input). The suites then assert the column through ordinary GX expectations
(``expect_column_values_to_be_in_set(["ok"])``, ``..._to_be_between``), so every failure, computed here or
by GX itself, lands in the same validation result and the same Data Docs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

OK = "ok"


def is_null(value: Any) -> bool:
    """None or a float NaN (what pandas puts in a missing cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def per_row(values: Iterable[Any], check: Callable[[Any], Any]) -> list[Any]:
    """``check(value)`` for every non-null value, None for null ones."""
    return [None if is_null(value) else check(value) for value in values]


def group_sizes(keys: Sequence[Any]) -> list[int | None]:
    """How many rows share each row's key (None for a null key): asserts 'exactly N rows per key'."""
    counts = Counter(key for key in keys if not is_null(key))
    return [None if is_null(key) else counts[key] for key in keys]


def group_composition(
    keys: Sequence[Any], values: Sequence[Any], expected: Mapping[Hashable, int]
) -> list[str | None]:
    """Per row: "ok" when its key's group holds exactly ``expected`` (value -> count), else what it holds.

    E.g. ``expected={"Yes": 1, "No": 1}`` gives "2 x Yes, 0 x No (expected 1 x Yes, 1 x No)" on both rows of a
    question whose two answers are "Yes".
    """
    groups: dict[Any, Counter[Any]] = {}
    for key, value in zip(keys, values):
        if not is_null(key):
            groups.setdefault(key, Counter())[None if is_null(value) else value] += 1
    want = ", ".join(f"{count} x {value}" for value, count in expected.items())
    status: dict[Any, str] = {}
    for key, counter in groups.items():
        if dict(counter) == {value: count for value, count in expected.items() if count}:
            status[key] = OK
        else:
            names = list(expected) + [value for value in counter if value not in expected]
            seen = ", ".join(f"{counter.get(value, 0)} x {value}" for value in names)
            status[key] = f"{seen} (expected {want})"
    return [None if is_null(key) else status[key] for key in keys]


def lookup_status(
    values: Sequence[Any], table: Mapping[Any, Any], expected: Iterable[Any], what: str
) -> list[str | None]:
    """Per row: "ok" when ``table[value]`` is one of ``expected``; else "unknown <what> ..." or what it maps to."""
    allowed = set(expected)

    def check(value: Any) -> str:
        if value not in table:
            return f"unknown {what} {value!r}"
        found = table[value]
        if found in allowed:
            return OK
        return f"{what} {value!r} is {found!r}, expected {' or '.join(map(repr, sorted(allowed)))}"

    return per_row(values, check)


def duplicate_status(frame: Any, columns: Sequence[str], line_column: str = "__line__") -> list[str | None]:
    """Per row: "ok", "duplicate of line(s) 3, 9" when another row has the same values in ``columns``, or None
    when one of them is null.

    Rows are hashed (Python's 64-bit hash of the value tuple: strings cache their hash, so this beats pandas'
    hashing 10x) and only rows whose hashes collide are compared by value; a million long prompts cost about a
    second, and long texts need not go to GX at all.
    """
    import numpy as np
    import pandas as pd

    subset = frame[list(columns)]
    null = subset.isna().any(axis=1).to_numpy()
    values = zip(*(subset[column].tolist() for column in columns))
    keys = np.fromiter((_hash(row) for row in values), dtype=np.int64, count=len(subset))
    candidate = pd.Series(keys).duplicated(keep=False).to_numpy() & ~null
    status = np.full(len(frame), OK, dtype=object)
    status[null] = None
    if candidate.any():
        positions = np.flatnonzero(candidate)
        rows = frame.iloc[positions][[*columns, line_column]].set_axis(positions, axis=0)
        for _, group in rows.groupby(list(columns), sort=False, dropna=True):  # by value: hash ties drop out
            if len(group) < 2:
                continue
            lines = group[line_column].tolist()
            for position, line in zip(group.index, lines):
                others = [str(other) for other in lines if other != line][:5]
                status[position] = f"duplicate of line(s) {', '.join(others)}"
    return status.tolist()


def _hash(row: tuple[Any, ...]) -> int:
    try:
        return hash(row)
    except TypeError:  # a list or dict in a key column: hash its text
        return hash(repr(row))


# ---- texts ------------------------------------------------------------------------------------------------
def text_status(value: Any) -> str:
    """"ok" for a string holding at least one non-space character; else "missing", "blank" or the type found."""
    if type(value) is str:
        return OK if value.strip() else "blank"
    if value is None:
        return "missing"
    return f"not a string ({_type_name(value)})"


def token_count(text: str, low: int, high: int) -> int | None:
    """Whitespace tokens of ``text`` when they might lie outside [low, high]; None when they cannot.

    ``str.split()`` costs ~2.5 us on a 40-word turn, 10+ s over a million FIRE dialogues, so it runs only where
    the answer is in doubt: a string of L characters holds at most ceil(L/2) tokens, and a non-blank one at
    least 1 (blank texts are reported by the text checks, so ``low <= 1`` needs no count).
    """
    if low <= 1 and (len(text) + 1) // 2 <= high:
        return None
    return len(text.split())


def token_counts(values: Iterable[Any], low: int, high: int) -> list[int | None]:
    """``token_count`` per row (None for non-strings: the type checks report those)."""
    return [token_count(value, low, high) if type(value) is str else None for value in values]


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", list: "list", dict: "dict", str: "str"}.get(
        type(value), type(value).__name__
    )


# ---- images --------------------------------------------------------------------------------------------------
class ImageChecker:
    """Decides whether image paths of records point at good images under a data root; caches by path.

    A path is good when it is relative, stays inside the root once resolved (no ``..`` escape, no symlink
    out of it), names a file PIL can fully decode (``img.load()``), of the expected size and mode. An image
    shared by many records is opened once; files are checked on a small thread pool (PIL releases the GIL
    while decoding).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        size: tuple[int, int] | None = None,
        mode: str | None = None,
        max_pixels: int | None | str = "configured",
        workers: int = 4,
        progress: bool = False,
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.mode = mode
        self.max_pixels = max_pixels  # "configured": $SILKFIRE_MAX_IMAGE_PIXELS or the policy's default
        self.workers = workers
        self.progress = progress
        self._cache: dict[str, str] = {}

    def statuses(self, paths: Sequence[Any]) -> list[str | None]:
        """One status per row (None for a null path); each distinct path is checked once."""
        todo = sorted({path for path in paths if isinstance(path, str) and path not in self._cache})
        if todo:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                results = pool.map(self._check, todo)
                for path, status in zip(
                    todo, tqdm(results, total=len(todo), desc="quality: images", unit="img", disable=not self.progress)
                ):
                    self._cache[path] = status
        return [self._cache[path] if isinstance(path, str) else None for path in paths]

    @property
    def checked(self) -> int:
        """Distinct paths checked so far."""
        return len(self._cache)

    def _check(self, relative: str) -> str:
        """The policy's verdict (silkfire.images: inside the root, a regular file, a decodable image under the
        pixel limit), then the expected size and mode. Any error is this path's status, never a crash."""
        from silkfire.images import UnsafeImage, check_image

        try:
            image = check_image(self.root, relative, limit=self.max_pixels)
            image.read_bytes()  # decodes every pixel: a truncated file fails here, not in a model
        except UnsafeImage as error:
            return error.reason
        except Exception as error:  # noqa: BLE001 -- one bad file is that row's failure, whatever it raises
            return f"cannot check image ({type(error).__name__}: {error})"
        size = (image.width, image.height)
        problems = []
        if self.size is not None and tuple(size) != tuple(self.size):
            problems.append(f"size {size[0]}x{size[1]}, expected {self.size[0]}x{self.size[1]}")
        if self.mode is not None and image.mode != self.mode:
            problems.append(f"mode {image.mode}, expected {self.mode}")
        return "; ".join(problems) if problems else OK
