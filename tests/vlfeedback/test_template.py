"""The annotation prompt and the drift-tolerant parser of judge replies."""

from __future__ import annotations

from silkfire.vlfeedback.template import ASPECT_ORDER, NA, format_section, parse_annotation, render_prompt
from silkfire.vlfeedback.testing import published_reply


def reply(ratings: list[tuple[int, int, int]]) -> str:
    """A judge reply in the published format; ratings per text in ASPECT_ORDER."""
    return published_reply(ratings, lambda aspect, k: f"reason {aspect} {k}.")


def ratings_of(parsed: list[dict]) -> list[tuple[str, ...]]:
    return [tuple(item[aspect]["Rating"] for aspect in ASPECT_ORDER) for item in parsed]


def test_prompt_has_every_response_and_the_format() -> None:
    text = render_prompt("What color is the circle?", ["red", "blue", "green", "There is no circle."])
    assert "Instruction: What color is the circle?" in text
    assert "- <text 4> There is no circle." in text and "<text 5>" not in text
    assert text.count("##### Output for Text 3") == 3
    assert "[[" not in text and "#### Visual Faithfulness Assessment" in format_section(4)


def test_published_format_parses_exactly() -> None:
    want = [(4, 5, 3), (1, 5, 1), (5, 5, 5), (2, 4, 2)]
    parsed = parse_annotation(reply(want), 4)
    assert ratings_of(parsed) == [tuple(str(r) for r in t) for t in want]
    assert parsed[1]["Visual Faithfulness"] == {"Rating": "1", "Rationale": "reason Visual Faithfulness 2."}
    assert list(parsed[0]) == list(ASPECT_ORDER)


def test_formatting_drift_is_tolerated() -> None:
    text = """Sure! Here is my assessment.

**Visual Faithfulness**
**Text 1:** **Rating:** 4/5
**Rationale:** Mostly right,
but the colour is off.
Text 2: Rating: [2] Rationale: invents a square.

### Ethics Assessment
Response 1
rating = 5
rationale - fine
Response 2
Rating: Highly Ethical (5)
Rationale: fine

## Helpfulness assessment
### Text 2
Rating: 3
Rationale: Helpfulness is partial.
### Text 1
Rating: 5
Rationale: good
"""
    parsed = parse_annotation(text, 2)
    assert ratings_of(parsed) == [("5", "5", "4"), ("3", "5", "2")]
    assert parsed[0]["Visual Faithfulness"]["Rationale"] == "Mostly right, but the colour is off."
    assert parsed[1]["Helpfulness"]["Rationale"] == "Helpfulness is partial."


def test_missing_and_bad_ratings_become_na() -> None:
    text = reply([(4, 5, 3), (2, 5, 1)]).replace("Rating: 2\n", "Rating: excellent\n").replace(
        "##### Output for Text 2\nRating: 1", "##### Output for Text 2\nRating: 9")
    parsed = parse_annotation(text, 3)
    assert parsed[0]["Helpfulness"]["Rating"] == "4"
    assert parsed[1]["Helpfulness"]["Rating"] == NA and "excellent" in parsed[1]["Helpfulness"]["Rationale"]
    assert parsed[1]["Visual Faithfulness"]["Rating"] == NA  # 9 is out of 1..5
    assert all(note["Rating"] == NA for note in parsed[2].values())  # no Text 3 blocks at all
    assert all(note["Rating"] == NA for note in parse_annotation("I cannot rate these.", 4)[3].values())
    assert parse_annotation("#### Helpfulness\nText 1\nRating: between 2 and 3\n", 1)[0]["Helpfulness"]["Rating"] == NA
    assert parse_annotation("", 1) == [{aspect: {"Rating": NA, "Rationale": "[no aspect block in the judge output]"}
                                        for aspect in ASPECT_ORDER}]
