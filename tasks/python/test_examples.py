"""The example tasks on the SDK's native fallback (plain pytest, nothing built)."""

import pytest

from sprout_task import TaskError, http, testing

import add
import fail
import fetch_feed
import fib

RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>c</title>
<item><title> First </title></item><item><title>Second</title></item></channel></rss>"""


def setup_function():
    testing.reset()


def test_add_and_fib():
    assert testing.run("py.add", [2, 3]) == 5
    assert fib.fib(10) == 55
    with pytest.raises(TaskError) as e:
        testing.run("py.fib", [-1])
    assert e.value.kind == "ValueError"


def test_raisers_keep_their_kinds():
    for kind in ("ValueError", "KeyError", "FeedError", "CustomKind"):
        with pytest.raises(TaskError) as e:
            testing.run("py.raise", ["TaskError" if kind == "CustomKind" else kind, "m"])
        assert e.value.kind == kind


def test_fetch_feed_parses_rss_and_atom():
    testing.mock_http(lambda req: http.Response(200, body=RSS))
    assert fetch_feed.fetch_feed("http://feeds.test/a") == {"items": 2, "title": "First"}
    atom = b'<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>A</title></entry></feed>'
    testing.mock_http(lambda req: http.Response(200, body=atom))
    assert fetch_feed.fetch_feed("http://feeds.test/b") == {"items": 1, "title": "A"}
    testing.mock_http(lambda req: http.Response(200, body=b"<html/>"))
    with pytest.raises(TaskError) as e:
        fetch_feed.fetch_feed("http://feeds.test/c")
    assert e.value.kind == "FeedError"
    testing.mock_http(lambda req: http.Response(500))
    with pytest.raises(http.HTTPError):
        fetch_feed.fetch_feed("http://feeds.test/d")
