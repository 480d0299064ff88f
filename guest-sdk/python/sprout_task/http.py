"""Blocking HTTP for tasks: :func:`get` and :func:`request`, over ``wasi:http``.

Write plain blocking code; while a request waits for the network the worker suspends
this job and runs others, so a thousand tasks waiting on HTTP cost no threads::

    from sprout_task import task, http

    @task
    def title(url: str) -> str:
        page = http.get(url).raise_for_status()
        return page.text.splitlines()[0]

What the worker allows
    Nothing, unless the task's manifest lists the destination in ``[capabilities]
    allowed_hosts`` (``"https://api.example.com"``, ``"http://127.0.0.1:*"``). Each
    request and each redirect hop is checked before anything is sent. The manifest also
    sets the timeouts (``http_timeout``) and the largest response (``http_max_response_kib``).

Errors (the exception's class name is the job's error kind)
    ``PermissionError`` the host is not in ``allowed_hosts``; ``TimeoutError`` connect,
    first byte or a body read took too long; ``ResponseTooLarge`` the body is larger than
    the worker allows; ``ConnectionError`` refused, reset, DNS failure; ``ValueError`` a
    malformed URL or header; ``HTTPError`` protocol errors, too many redirects,
    :meth:`Response.raise_for_status`. A non-2xx status is not an error by itself.

Outside a worker
    Natively there is no network: requests raise ``HTTPError`` unless a test installs a
    fake with :func:`sprout_task.testing.mock_http`.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import urljoin, urlsplit

from ._host import IN_WORKER

if IN_WORKER:
    # Imported when the task file is built (componentize-py snapshots the interpreter
    # then): a binding module first imported inside a job is not in the file.
    from componentize_py_types import Err as _Err  # type: ignore[import-not-found]
    from wit_world.imports import outgoing_handler as _outgoing_handler  # type: ignore[import-not-found]
    from wit_world.imports import streams as _streams  # type: ignore[import-not-found]
    from wit_world.imports import wasi_http_types as _t  # type: ignore[import-not-found]

__all__ = [
    "Request",
    "Response",
    "HTTPError",
    "ResponseTooLarge",
    "get",
    "request",
    "MAX_REDIRECTS",
]

#: Most redirects followed for one request.
MAX_REDIRECTS = 10
_READ_CHUNK = 64 * 1024
_WRITE_CHUNK = 4096
_REDIRECTS = (301, 302, 303, 307, 308)


class HTTPError(Exception):
    """A protocol error, too many redirects, or a non-2xx status (``raise_for_status``)."""


class ResponseTooLarge(Exception):
    """The response body is larger than the worker allows (``http_max_response_kib``)."""


@dataclass
class Request:
    """A request as the transport sees it (after redirects are resolved)."""

    #: ``GET``, ``POST``, … (upper case).
    method: str
    #: The absolute URL.
    url: str
    #: Header names and values, in order.
    headers: List[Tuple[str, str]] = field(default_factory=list)
    #: The body (empty for none).
    body: bytes = b""


@dataclass
class Response:
    """A complete response: status, headers (lower-case names) and the whole body."""

    #: The status code (200, 404, …).
    status: int
    #: Header names (lower case) and values, in the order received.
    headers: List[Tuple[str, str]] = field(default_factory=list)
    #: The body.
    body: bytes = b""
    #: The URL that produced this response (the last hop of any redirects).
    url: str = ""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` when it is not JSON)."""
        return _json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for k, v in self.headers:
            if k == wanted:
                return v
        return None

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def raise_for_status(self) -> "Response":
        """Returns this response when it is 2xx; raises :class:`HTTPError` otherwise."""
        if not self.ok:
            raise HTTPError(f"http: GET {self.url} returned {self.status}")
        return self


def get(url: str, headers: Optional[Mapping[str, str]] = None) -> Response:
    """``GET url``; see :func:`request`."""
    return request("GET", url, headers=headers)


def request(
    method: str,
    url: str,
    headers: Optional[Mapping[str, str]] = None,
    body: Union[bytes, str, None] = None,
    json: Any = None,
) -> Response:
    """Sends a request and returns the whole response, following redirects.

    ``body`` is sent as is (``str`` as UTF-8); ``json`` is encoded and sent with
    ``content-type: application/json``. 303, and 301/302 after a ``POST``, continue as
    a ``GET`` without a body; ``Authorization`` is dropped when the host changes.
    """
    method = str(method).upper()
    if not method.isalpha():
        raise ValueError(f"http: invalid method {method!r}")
    header_list: List[Tuple[str, str]] = [(str(k), str(v)) for k, v in (headers or {}).items()]
    if json is not None:
        if body is not None:
            raise ValueError("http: pass body or json, not both")
        body = _json.dumps(json)
        if not any(k.lower() == "content-type" for k, _ in header_list):
            header_list.append(("content-type", "application/json"))
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    _check_url(url)
    req = Request(method=method, url=url, headers=header_list, body=data)
    first = url
    for _ in range(MAX_REDIRECTS + 1):
        response = _send(req)
        location = response.header("location")
        if response.status not in _REDIRECTS or location is None:
            return response
        target = urljoin(req.url, location)
        _check_url(target)
        if response.status == 303 or (response.status in (301, 302) and req.method == "POST"):
            req = Request("GET", target, [(k, v) for k, v in req.headers if k.lower() not in ("content-type", "content-length")], b"")
        else:
            req = Request(req.method, target, list(req.headers), req.body)
        if urlsplit(target).netloc != urlsplit(first).netloc:
            req.headers = [(k, v) for k, v in req.headers if k.lower() != "authorization"]
    raise HTTPError(f"http: {method} {first}: more than {MAX_REDIRECTS} redirects")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"http: invalid URL {url!r}: the scheme must be http or https")
    if not parts.netloc:
        raise ValueError(f"http: invalid URL {url!r}: no host")


def _send(req: Request) -> Response:
    if IN_WORKER:
        return _wasi_send(req)
    from . import testing

    handler = testing._state.http
    if handler is None:
        raise HTTPError(
            f"http: {req.method} {req.url}: HTTP needs a Sprout worker; in native tests "
            "install a fake with sprout_task.testing.mock_http"
        )
    response = handler(req)
    if not response.url:
        response.url = req.url
    return response


def _wasi_send(req: Request) -> Response:
    Err, outgoing_handler, streams, t = _Err, _outgoing_handler, _streams, _t

    parts = urlsplit(req.url)
    where = f"http: {req.method} {req.url}"
    fields = t.Fields()
    try:
        for name, value in req.headers:
            fields.append(name, value.encode("utf-8"))
        if req.body and not any(k.lower() == "content-length" for k, _ in req.headers):
            fields.append("content-length", str(len(req.body)).encode())
    except Err as e:
        raise ValueError(f"{where}: invalid header: {e.value}") from None
    outgoing = t.OutgoingRequest(fields)
    methods = {
        "GET": t.Method_Get(), "HEAD": t.Method_Head(), "POST": t.Method_Post(),
        "PUT": t.Method_Put(), "DELETE": t.Method_Delete(), "OPTIONS": t.Method_Options(),
        "PATCH": t.Method_Patch(), "TRACE": t.Method_Trace(), "CONNECT": t.Method_Connect(),
    }
    try:
        outgoing.set_method(methods.get(req.method, t.Method_Other(req.method)))
        outgoing.set_scheme(t.Scheme_Https() if parts.scheme == "https" else t.Scheme_Http())
        outgoing.set_authority(parts.netloc)
        outgoing.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    except Err:
        raise ValueError(f"{where}: invalid URL") from None
    body = outgoing.body() if req.body else None
    try:
        future = outgoing_handler.handle(outgoing, None)
    except Err as e:
        raise _from_code(e.value, where) from None
    if body is not None:
        stream = body.write()
        try:
            for i in range(0, len(req.body), _WRITE_CHUNK):
                stream.blocking_write_and_flush(req.body[i : i + _WRITE_CHUNK])
        except Err:
            pass  # The reason comes with the response.
        stream.__exit__(None, None, None)
        try:
            t.OutgoingBody.finish(body, None)
        except Err as e:
            raise _from_code(e.value, where) from None
    while True:
        got = future.get()
        if got is not None:
            break
        pollable = future.subscribe()
        pollable.block()
        pollable.__exit__(None, None, None)
    future.__exit__(None, None, None)
    try:
        inner = got.value if not isinstance(got, Err) else None
        if inner is None:
            raise HTTPError(f"{where}: the response was already taken")
        if isinstance(inner, Err):
            raise _from_code(inner.value, where)
        response = inner.value
    except AttributeError:
        raise HTTPError(f"{where}: unexpected response {got!r}") from None
    status = response.status()
    hdrs = response.headers()
    headers = [(k.lower(), v.decode("utf-8", errors="replace")) for k, v in hdrs.entries()]
    hdrs.__exit__(None, None, None)
    incoming = response.consume()
    stream = incoming.stream()
    chunks: List[bytes] = []
    try:
        while True:
            try:
                chunks.append(stream.blocking_read(_READ_CHUNK))
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                err = e.value.value
                code = t.http_error_code(err)
                raise (_from_code(code, where) if code is not None else _from_text(err.to_debug_string(), where)) from None
    finally:
        stream.__exit__(None, None, None)
    t.IncomingBody.finish(incoming).__exit__(None, None, None)
    response.__exit__(None, None, None)
    return Response(status=status, headers=headers, body=b"".join(chunks), url=req.url)


def _from_code(code: Any, where: str) -> Exception:
    name = type(code).__name__.removeprefix("ErrorCode_")
    if name == "HttpRequestDenied":
        host = urlsplit(where.split(" ", 2)[-1]).netloc
        return PermissionError(f"http: host {host} is not in allowed_hosts")
    if name == "ConnectionTimeout":
        return TimeoutError(f"{where}: no connection within the timeout")
    if name in ("ConnectionReadTimeout", "HttpResponseTimeout"):
        return TimeoutError(f"{where}: no response within the timeout")
    if name == "HttpResponseBodySize":
        return ResponseTooLarge(f"{where}: the response is larger than the worker allows ({getattr(code, 'value', None)} bytes)")
    if name == "ConnectionRefused":
        return ConnectionError(f"{where}: connection refused")
    if name == "ConnectionTerminated":
        return ConnectionError(f"{where}: the connection was closed")
    if name in ("DnsTimeout", "DnsError"):
        return ConnectionError(f"{where}: DNS lookup failed")
    if name.startswith("Destination"):
        return ConnectionError(f"{where}: destination unreachable ({name})")
    if name in ("HttpRequestUriInvalid", "HttpRequestMethodInvalid"):
        return ValueError(f"{where}: {name}")
    return HTTPError(f"{where}: {name}")


def _from_text(text: str, where: str) -> Exception:
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return TimeoutError(f"{where}: the response body stalled past the timeout")
    if "too large" in lowered or "body size" in lowered:
        return ResponseTooLarge(f"{where}: the response is larger than the worker allows")
    return ConnectionError(f"{where}: {text}")
