"""distill.io's dataset rows: chat rows and plain-text rows, and what a bad row is told."""

from __future__ import annotations

import json

import pytest

from distill.io import InputError, check_example, read_examples


def test_plain_text_rows_are_rows():
    assert check_example({"id": "t1", "domain": "web", "text": "Some text."}) is None


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"id": "t", "domain": "web", "text": ""}, '"text" must be a non-empty string'),
        ({"id": "t", "domain": "web", "text": 3}, '"text" must be a non-empty string'),
        ({"id": "t", "domain": "web"}, 'missing key "messages" (a chat row) or "text"'),
        (
            {"id": "t", "domain": "web", "text": "x", "messages": []},
            'both "messages" and "text"',
        ),
    ],
)
def test_bad_plain_text_rows_say_what_is_wrong(row, problem):
    assert problem in check_example(row)


def test_a_bad_row_names_both_kinds_in_its_fix(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"id": "a", "domain": "web", "text": "ok"}, {"id": "b", "domain": "web"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"mixed.jsonl:2: missing key .*plain-text row"):
        read_examples(path)
