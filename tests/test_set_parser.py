"""Property tests of the ``--set key=value`` parser (``diffinv.cli._options``)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffinv.cli import _options
from diffinv.errors import DiffinvError

#: Fragments that exercise YAML: flow collections, tags, anchors, dates, exponents, quotes.
YAML_BITS = [
    "[", "]", "{", "}", ",", ": ", " ", "-", "'", '"', "#", "|", ">", "?", "\n", "\t", "&a ", "*a",
    "!!timestamp ", "!!float ", "!!int ", "!!binary ", "!!set ", "!!python/name:os.system ", "!!omap ",
    "2015-02-30", "2015-01-01", "12:30:00", "1e5", "1e-5", ".nan", ".inf", "0x1F", "0o7", "1_000",
    "true", "no", "~", "null", "abc", "0", "1.5", "%", "@", "`", "\x00", "\ufeff", "é",
]  # fmt: skip
YAMLISH = st.lists(st.sampled_from(YAML_BITS), max_size=12).map("".join)
#: Names YAML 1.1 reads as booleans or null rather than text.
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
WORDS = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(lambda w: w not in YAML_WORDS)
SCALARS = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), WORDS)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=5))


def _text(value: object) -> str:
    """``value`` as one would type it after ``--set key=``."""
    if isinstance(value, list):
        return "[" + ",".join(map(_text, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _same(a: object, b: object) -> bool:
    """Equal values of the same types, lists item by item."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(WORDS, st.text(max_size=12).filter(lambda k: "=" not in k)),
    value=st.one_of(st.text(max_size=40), YAMLISH),
)
def test_any_text_gives_options_or_a_one_line_error(key: str, value: str) -> None:
    try:
        out = _options([f"{key}={value}"])
    except DiffinvError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(out, dict) and list(out) == [key.replace("-", "_")]


@settings(max_examples=200, deadline=None)
@given(value=VALUES)
def test_simple_typed_values_round_trip(value: object) -> None:
    assert _same(_options([f"key={_text(value)}"])["key"], value)


@pytest.mark.parametrize(
    "pairs,message",
    [
        (["lat"], "expected key=value"),
        (["=5"], "expected key=value"),
        (["a b=1"], "'a b' is not an option name"),
        (["lat=[1,2]", "lat=[3,4]"], "option 'lat' given twice"),
        (["x=&a [*a]"], "option x='&a [*a]': not a valid value"),
        (["time=!!timestamp x"], "option time='!!timestamp x': not a valid value"),
    ],
)
def test_malformed_pairs_are_named(pairs: list[str], message: str) -> None:
    with pytest.raises(DiffinvError, match=re.escape(message)):
        _options(pairs)


def test_dates_stay_text_and_exponents_are_numbers() -> None:
    assert _options(["time=[2015-01-01,2015-02-30]", "min_transmission=1e-5", "n=1e6"]) == {
        "time": ["2015-01-01", "2015-02-30"],
        "min_transmission": 1e-5,
        "n": 1e6,
    }
