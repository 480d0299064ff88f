"""The SDK on its native fallback: what a task author's plain `pytest` sees."""

import datetime
import decimal
import json

import pytest

import sprout_task
from sprout_task import Retry, TaskError, config, http, job, log, progress, task, testing
from sprout_task._registry import dispatch


@pytest.fixture(autouse=True)
def fresh_state():
    testing.reset()
    yield
    testing.reset()


@task(name="t.add")
def add(a, b=0):
    """Adds."""
    return a + b


@task
def default_named(x):
    return x


@task(name="t.fail")
def fail(kind):
    if kind == "value":
        raise ValueError("bad value")
    if kind == "key":
        return {}["missing"]
    if kind == "custom":
        raise TaskError("FeedError", "not a feed")
    if kind == "retry":
        raise Retry("busy", countdown=1.5)
    if kind == "retry-default":
        raise Retry("busy")
    if kind == "exit":
        raise SystemExit(3)
    return "ok"


@task(name="t.services")
def services():
    log("info", "hello")
    progress(1, 2)
    return {"job": job().id, "region": config("region"), "missing": config("nope", "dflt")}


def test_the_decorated_function_is_still_callable():
    assert add(2, 3) == 5
    assert add.name == "t.add"
    assert add.__doc__ == "Adds."
    assert "t.add" in sprout_task.registered()


def test_default_names_are_module_qualified_like_celery():
    assert default_named.name == f"{__name__}.default_named"


def test_args_and_kwargs_bind_like_a_python_call():
    assert dispatch("t.add", "[1, 2]", "{}") == "3"
    assert dispatch("t.add", "[1]", '{"b": 5}') == "6"
    kind, message, _, _ = dispatch("t.add", "[]", "{}")
    assert kind == "TypeError" and "missing" in message
    kind, _, _, _ = dispatch("t.add", "[1]", '{"c": 1}')
    assert kind == "TypeError"


def test_bad_json_and_wrong_shapes():
    assert dispatch("t.add", "[1,", "{}")[0] == "DecodeError"
    assert dispatch("t.add", "{}", "{}")[0] == "TypeError"
    assert dispatch("t.add", "[]", "[]")[0] == "TypeError"


def test_unknown_task_is_not_registered():
    kind, message, _, _ = dispatch("t.nope", "[]", "{}")
    assert kind == "NotRegistered" and "t.add" in message


def test_exceptions_become_kinds():
    assert dispatch("t.fail", '["value"]', "{}")[:2] == ("ValueError", "bad value")
    assert dispatch("t.fail", '["key"]', "{}")[0] == "KeyError"
    assert dispatch("t.fail", '["custom"]', "{}")[:2] == ("FeedError", "not a feed")
    assert dispatch("t.fail", '["exit"]', "{}")[0] == "SystemExit"
    assert dispatch("t.fail", '["retry"]', "{}") == ("Retry", "busy", 1500, True)
    assert dispatch("t.fail", '["retry-default"]', "{}") == ("Retry", "busy", None, True)


def test_results_are_json():
    @task(name="t.values")
    def values(which):
        return {
            "dt": datetime.datetime(2024, 1, 2, 3, 4, 5),
            "dec": decimal.Decimal("1.10"),
            "tuple": (1, 2),
            "nan": float("nan"),
            "obj": object(),
        }[which]

    assert json.loads(dispatch("t.values", '["dt"]', "{}")) == "2024-01-02T03:04:05"
    assert json.loads(dispatch("t.values", '["dec"]', "{}")) == "1.10"
    assert json.loads(dispatch("t.values", '["tuple"]', "{}")) == [1, 2]
    assert dispatch("t.values", '["nan"]', "{}")[0] == "EncodeError"
    assert dispatch("t.values", '["obj"]', "{}")[0] == "EncodeError"


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="two tasks"):

        @task(name="t.add")
        def other(a):
            return a


def test_retry_and_task_error_check_their_inputs():
    with pytest.raises(ValueError):
        Retry(countdown=-1)
    with pytest.raises(TypeError):
        Retry(countdown="5")
    with pytest.raises(TypeError):
        TaskError("", "x")
    assert Retry(countdown=2).countdown_ms == 2000


def test_host_services_use_the_fakes():
    testing.set_job(id="job-7")
    testing.set_config("region", "eu")
    assert testing.run("t.services") == {"job": "job-7", "region": "eu", "missing": "dflt"}
    assert testing.logs() == [("info", "hello")]
    assert testing.progress() == [(1, 2)]
    with pytest.raises(ValueError):
        log("loud", "x")
    with pytest.raises(ValueError):
        progress(-1, 2)


def test_testing_run_raises_the_jobs_error():
    with pytest.raises(TaskError) as e:
        testing.run("t.fail", ["value"])
    assert e.value.kind == "ValueError"


def test_http_needs_a_fake_natively():
    with pytest.raises(http.HTTPError, match="mock_http"):
        http.get("http://example.test/")


def test_http_fake_redirects_and_errors():
    seen = []

    def handler(req):
        seen.append((req.method, req.url, dict(req.headers)))
        if req.url.endswith("/old"):
            return http.Response(303, [("location", "/new")])
        if req.url.endswith("/loop"):
            return http.Response(302, [("location", "/loop")])
        return http.Response(200, [("content-type", "text/plain")], b'{"a": 1}')

    testing.mock_http(handler)
    r = http.request("POST", "http://h.test/old", json={"x": 1}, headers={"Authorization": "k"})
    assert r.status == 200 and r.json() == {"a": 1} and r.url == "http://h.test/new"
    assert seen[1][0] == "GET" and seen[1][1] == "http://h.test/new"
    with pytest.raises(http.HTTPError, match="redirects"):
        http.get("http://h.test/loop")
    with pytest.raises(ValueError, match="scheme"):
        http.get("ftp://h.test/")
    with pytest.raises(http.HTTPError, match="404"):
        http.Response(404, url="http://h.test/x").raise_for_status()
