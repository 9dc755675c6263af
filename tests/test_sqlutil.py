"""quote_string is the one escaping function: fuzz it against the real store."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscope.sqlutil import quote_identifier, quote_string


@pytest.fixture(scope="module")
def client(store):
    return store


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_quote_string_round_trips_any_text(store, value):
    got = store.query(f"SELECT {quote_string(value)} AS v").rows[0][0]
    assert got == value


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from("'\\`\"\n\r\t\0;-/*xy "), max_size=60))
def test_quote_string_resists_injection_shapes(store, value):
    r = store.query(f"SELECT {quote_string(value)} AS v, 1 AS marker")
    assert r.rows == [(value, 1)]


def test_quote_identifier():
    assert quote_identifier("a`b") == "`a\\`b`"
    with pytest.raises(ValueError):
        quote_identifier("")


def test_quote_string_rejects_non_text():
    with pytest.raises(TypeError):
        quote_string(b"bytes")  # type: ignore[arg-type]
