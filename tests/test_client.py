"""OpenAIClient hardening against a real HTTP server on 127.0.0.1: redirects are
refused (the key never leaves ``api_base``), a total deadline bounds a dribbling
answer, malformed 200 answers are wrapped and retried, 429/5xx retried."""
import json
import time

import pytest

from conftest import send, serve
from recbole_llm.llm.client import LLMServerError, OpenAIClient

KEY = "sk-test-secret-42"


def _ok_body(prompts) -> bytes:
    return json.dumps({"choices": [{"index": i, "text": f"echo:{p}"}
                                   for i, p in enumerate(prompts)]}).encode()


def _valid(handler, n, body):
    send(handler, 200, _ok_body(body["prompt"]), [("Content-Type", "application/json")])


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", KEY)


def _client(base, **kwargs):
    kwargs = {"api_key_env": "TEST_LLM_KEY", "backoff": 0.01, "timeout": 5, **kwargs}
    return OpenAIClient(base, "m", **kwargs)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_refused_and_the_key_never_leaves_api_base(status):
    with serve(_valid) as (elsewhere, elsewhere_requests):
        def redirect(handler, n, body):
            send(handler, status, headers=[("Location", elsewhere + "/completions")])

        with serve(redirect) as (base, requests):
            with pytest.raises(LLMServerError) as info:
                _client(base, max_retries=2).complete(["p"])
    message = str(info.value)
    assert f"HTTP {status}" in message and elsewhere + "/completions" in message
    assert KEY not in message
    assert len(requests) == 1 and requests[0]["auth"] == f"Bearer {KEY}"  # not retried
    assert elsewhere_requests == []                          # nothing, let alone the key


def _dribbler(head: bytes, piece, pause: float):
    """A server writing ``head``, then ``piece(i)`` every ``pause`` seconds: each
    read is quick, the answer never ends."""
    def answer(handler, n, body):
        handler.wfile.write(head)
        for i in range(40):
            try:
                handler.wfile.write(piece(i))
                handler.wfile.flush()
            except OSError:
                return                # the client hung up
            time.sleep(pause)
    return answer


@pytest.mark.parametrize("dribble", [
    _dribbler(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", lambda i: b" ", 0.1),
    _dribbler(b"HTTP/1.1 200 OK\r\n", lambda i: f"X-Slow-{i}: 1\r\n".encode(), 0.2),
], ids=["body", "headers"])
def test_a_dribbling_answer_is_cut_at_the_total_deadline(dribble):
    with serve(dribble) as (base, requests):
        began = time.monotonic()
        with pytest.raises(LLMServerError, match="timed out after 1 attempt"):
            _client(base, timeout=1, max_retries=0).complete(["p"])
        elapsed = time.monotonic() - began
    assert 0.9 <= elapsed < 3 and len(requests) == 1


def test_slow_but_complete_answer_within_the_deadline_succeeds():
    def slow(handler, n, body):
        data = _ok_body(body["prompt"])
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for i in range(0, len(data), len(data) // 4 + 1):
            handler.wfile.write(data[i:i + len(data) // 4 + 1])
            handler.wfile.flush()
            time.sleep(0.1)

    with serve(slow) as (base, requests):
        assert _client(base, timeout=3, max_retries=0).complete(["a", "b"]) == ["echo:a", "echo:b"]


def test_non_json_200_is_wrapped_retried_and_never_shows_the_key():
    def html(handler, n, body):  # a proxy's error page that even echoes the request's header
        page = f"<html>Bad gateway {handler.headers['Authorization']}</html>" + "x" * 500
        send(handler, 200, page.encode(), [("Content-Type", "text/html")])

    with serve(html) as (base, requests):
        with pytest.raises(LLMServerError) as info:
            _client(base, max_retries=1).complete(["p"])
    message = str(info.value)
    assert base + "/completions" in message and "malformed answer after 2 attempt" in message
    assert "<html>Bad gateway" in message and "x" * 300 not in message   # only the start
    assert KEY not in message and "***" in message
    assert len(requests) == 2


@pytest.mark.parametrize("bad", [b"not json at all", b'{"error": "busy"}',
                                 b'{"choices": [{"index": 0, "text": "only one"}]}',
                                 b'{"choices": [{"index": 0, "text": null}, '
                                 b'{"index": 1, "text": "b"}]}'])
def test_malformed_answer_once_then_valid_succeeds(bad):
    def flaky(handler, n, body):
        if n == 0:
            send(handler, 200, bad)
        else:
            _valid(handler, n, body)

    with serve(flaky) as (base, requests):
        assert _client(base, max_retries=2).complete(["a", "b"]) == ["echo:a", "echo:b"]
    assert len(requests) == 2


def test_chat_answer_without_content_is_retried():
    def chat(handler, n, body):
        content = None if n == 0 else "hi:" + body["messages"][0]["content"]
        send(handler, 200, json.dumps(
            {"choices": [{"index": 0, "message": {"content": content}}]}).encode())

    with serve(chat) as (base, requests):
        assert _client(base, mode="chat").complete(["x"]) == ["hi:x"]
    assert len(requests) == 2


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retryable_status_then_ok(status):
    def flaky(handler, n, body):
        if n == 0:
            send(handler, status, b"busy")
        else:
            _valid(handler, n, body)

    with serve(flaky) as (base, requests):
        assert _client(base).complete(["a"]) == ["echo:a"]
    assert len(requests) == 2 and all(r["auth"] == f"Bearer {KEY}" for r in requests)


def test_client_error_is_not_retried():
    with serve(lambda handler, n, body: send(handler, 400, b"bad request")) as (base, requests):
        with pytest.raises(LLMServerError, match="HTTP 400"):
            _client(base, max_retries=3).complete(["a"])
    assert len(requests) == 1


def test_only_http_urls_are_accepted():
    with pytest.raises(ValueError, match="http"):
        OpenAIClient("file:///etc", "m")
