"""Markdown from data (the model card, Dagster markdown metadata): every data-derived string is escaped so that it
renders as its own text, never as markup: no HTML tag or autolink, no link or image, no emphasis or code span,
no table-cell break, and no block (heading, list, quote, code block) even at the start of a line."""

from __future__ import annotations

import re

_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Always special inline; '_' only where it can open or close emphasis (not between two letters or digits).
_INLINE = re.compile(r"[\\`*\[\]|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# What makes a line a heading, list item, setext underline or thematic break when it comes first.
_BLOCK_MARK = re.compile(r"^(?=[#=+-])")
_ORDERED_ITEM = re.compile(r"^(\d+)([.)])(?=\s|$)")


def escape_markdown(value: object) -> str:
    """``value`` as literal Markdown text on one line (line breaks and runs of white space become one space)."""
    text = _INLINE.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()).translate(_HTML))
    return _ORDERED_ITEM.sub(r"\1\\\2", _BLOCK_MARK.sub(r"\\", text))
