import pytest

from meshscope.config import parse_duration, parse_size


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("1h30m", 5400), ("7d", 604800), ("500ms", 0.5), ("2", 2)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "1h foo", "-3s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text,n", [("1024", 1024), ("16MiB", 16 * 1024**2), ("64MB", 64 * 10**6), ("1GiB", 1024**3)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "12 parsecs", "MiB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)
