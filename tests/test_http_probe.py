"""HTTP requests from the runner against servers that do not answer in HTTP: every such
answer is a ``ProbeError`` (a finding), never an internal error."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from crmmaint.engines.http_probe import request_from_runner, send_from_runner
from crmmaint.errors import ProbeError

ANSWERS = [
    b"garbage\r\n\r\n",  # not a status line
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # broken chunks
    b"HTTP/1.1 99999999999 Huh\r\n\r\n",  # a status that is no status
    b"",  # closed at once
]


@pytest.fixture(params=ANSWERS)
def hostile(request: pytest.FixtureRequest) -> Iterator[str]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(request.param)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/cache"
    stop.set()
    thread.join()
    server.close()


def test_request_from_runner_says_no_answer(hostile: str) -> None:
    with pytest.raises(ProbeError, match="request failed"):
        request_from_runner(hostile, 5.0, False)


def test_send_from_runner_says_no_answer_and_keeps_the_token(hostile: str) -> None:
    with pytest.raises(ProbeError) as caught:
        send_from_runner(hostile, "POST", timeout=5.0, token="s3cr3t-token")
    assert "s3cr3t-token" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://scott:TigerPw4711@127.0.0.1:1/ok",
        "https://:TigerPw4711@127.0.0.1/ok",
        "http://TigerPw4711@127.0.0.1/ok",
    ],
)
def test_urls_with_credentials_are_refused_without_showing_them(url: str) -> None:
    from crmmaint.engines.http_probe import url_problem

    why = url_problem(url)
    assert why is not None and "TigerPw4711" not in why and "user name or password" in why


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "127.0.0.1/x", "http://"]
)
def test_only_http_urls(url: str) -> None:
    from crmmaint.engines.http_probe import url_problem

    assert "must start with http" in (url_problem(url) or "")


def test_shown_url_drops_the_query() -> None:
    from crmmaint.engines.http_probe import shown_url

    assert shown_url("http://127.0.0.1:8/ok?apikey=QuerySecret") == "http://127.0.0.1:8/ok"


@pytest.mark.parametrize("made_from", ["runner", "target"])
def test_health_http_never_shows_the_query(tmp_path, made_from: str) -> None:
    """A key in an endpoint's query string stays out of the result (message and details),
    whether the endpoint answers or not."""
    from crmmaint.inventory import Host, Inventory
    from crmmaint.playbook import load_playbook_text
    from crmmaint.playbook.run import run_playbook

    inventory = Inventory(path=str(tmp_path / "inv.yml"),
                          hosts={"local": Host(name="local", connection="local")})  # fmt: skip
    for url in (
        "http://127.0.0.1:1/healthz?apikey=QuerySecret4711",
        "http://127.0.0.1:1/#k=QuerySecret4711",
    ):
        book = load_playbook_text(
            f"steps: [{{name: h, task: health.http, hosts: all, with: {{url: '{url}',"
            f" from: {made_from}}}}}]",
            inventory,
        )
        (row,) = run_playbook(book, inventory, None).results
        assert "QuerySecret4711" not in row.result.message + repr(row.result.details)
