"""Markdown built from data renders as the data's own text: the model card's escaping and Dagster's markdown
metadata (batch and file names in tables)."""

import re

import markdown_it
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddiag_pipelines.defs.assets.common import markdown_table, png_markdown
from meddiag_pipelines.markup import escape_markdown

RENDERER = markdown_it.MarkdownIt("commonmark").enable("table")


def _inline_text(md: str) -> tuple[list[str], str]:
    """The block tokens a viewer builds from ``md`` and the plain text it shows."""
    tokens = RENDERER.parse(md)
    text = "".join(c.content for t in tokens if t.type == "inline" for c in t.children if c.type == "text")
    return [t.type for t in tokens], text


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60))
def test_escaped_text_renders_as_one_plain_paragraph_of_itself(text):
    blocks, shown = _inline_text(escape_markdown(text))
    expected = " ".join(text.split())
    if expected:
        assert blocks == ["paragraph_open", "inline", "paragraph_close"], (text, blocks)
        inline = [c.type for t in RENDERER.parse(escape_markdown(text)) if t.type == "inline" for c in t.children]
        assert set(inline) <= {"text"}, (text, inline)
    assert shown == expected


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        "[x](javascript:alert(1))",
        "![i](x.png)",
        "# h",
        "- item",
        "1. one",
        "**b** _e_ `c`",
        "a|b",
        "<http://evil>",
        "&lt;",
    ],
)
def test_hostile_strings_are_shown_not_interpreted(hostile):
    blocks, shown = _inline_text(escape_markdown(hostile))
    assert blocks == ["paragraph_open", "inline", "paragraph_close"] and shown == hostile


def test_plain_names_stay_readable():
    for name in ("batch_0001", "records.csv", "heart_disease", "2024-01-01", "0.912", "nodule/mass"):
        assert escape_markdown(name) == name


def test_metadata_tables_escape_batch_and_file_names():
    rows = [
        {
            "batch": "b1|<img src=x onerror=alert(1)>",
            "file": "[a](javascript:alert(1)).csv",
            "problem": "x\n| forged |",
        },
        {"batch": "batch_0002", "file": "records.csv", "problem": "ok", "n": 0.5},
    ]
    html = RENDERER.render(markdown_table(rows))
    assert "<img" not in html and "<a " not in html
    body = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert [row.count("<td") + row.count("<th") for row in body] == [3, 3, 3]  # no cell or row forged
    assert "b1|&lt;img src=x onerror=alert(1)&gt;" in html and "[a](javascript:alert(1)).csv" in html
    assert "| batch_0002 | records.csv | ok |" in markdown_table(rows)


def test_plot_title_is_escaped():
    md = png_markdown(b"\x89PNG", "roc](javascript:alert(1)) [x").value
    assert md.startswith("![roc\\](javascript:alert(1)) \\[x](data:image/png;base64,")
