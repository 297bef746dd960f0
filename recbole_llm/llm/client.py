"""One text-generation interface: the local backbone or an OpenAI-compatible server.

Llama4Rec (augmentation) and EIMF (semantic interests) ask an LLM for text.
``LocalClient`` runs the shared backbone; ``OpenAIClient`` talks to any
OpenAI-compatible endpoint (vLLM, Ollama, ...) with batching, retries with
exponential back-off, a total deadline per request and no redirects (the
API key goes to ``api_base`` only).  ``CachedClient`` stores every answer on
disk keyed by (client identity, prompt, decoding settings), so a re-run or a
resumed run never asks again.  The API key is read from an environment
variable at request time and is never logged, cached or checkpointed.
"""
import contextlib
import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod

from tqdm import tqdm

from recbole_llm.llm.generation import generate_text


class LLMClient(ABC):
    @property
    @abstractmethod
    def identity(self) -> str:
        """What makes answers differ (model name, endpoint): part of the cache key."""

    @abstractmethod
    def complete(self, prompts: list, max_new_tokens: int = 64, temperature: float = 0.0) -> list:
        """One completion per prompt, in order."""


class LocalClient(LLMClient):
    def __init__(self, model, tokenizer, batch_size: int = 8, name: str = "local"):
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name

    @property
    def identity(self) -> str:
        return f"local:{self.name}"

    def complete(self, prompts, max_new_tokens=64, temperature=0.0):
        if temperature:
            raise ValueError("LocalClient decodes greedily; temperature must be 0")
        self.model.eval()
        return generate_text(self.model, self.tokenizer, prompts, max_new_tokens,
                             batch_size=self.batch_size)


class LLMServerError(RuntimeError):
    pass


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string answer, got {type(value).__name__}")
    return value


class OpenAIClient(LLMClient):
    """``POST {api_base}/completions`` (prompts batched) or ``/chat/completions``.

    Each attempt has a total deadline of ``timeout`` seconds (socket timeouts
    alone are per read, so a server dribbling bytes could hold a call forever).
    429, 5xx, network errors, timeouts and malformed 200 answers are retried
    with exponential back-off; other 4xx and any redirect fail at once.
    """

    def __init__(self, api_base: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 mode: str = "completions", batch_size: int = 16, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 1.0):
        if mode not in ("completions", "chat"):
            raise ValueError(f"llm_api_mode must be 'completions' or 'chat', not '{mode}'")
        if not api_base.startswith(("http://", "https://")):
            raise ValueError(f"llm_api_base must be an http(s) URL, not '{api_base}'")
        self.api_base, self.model, self.api_key_env = api_base.rstrip("/"), model, api_key_env
        self.mode, self.batch_size, self.timeout = mode, batch_size, timeout
        self.max_retries, self.backoff = max_retries, backoff

    @property
    def identity(self) -> str:
        return f"openai:{self.api_base}:{self.model}:{self.mode}"

    def _exchange(self, path: str, data: bytes, headers: dict) -> tuple:
        """One POST, ``(status, Location, body)``, within ``timeout`` seconds in all.

        ``http.client`` follows no redirect, so the key goes to ``api_base``
        only.  Socket timeouts bound each read, not the whole answer (a server
        dribbling headers or body one byte at a time could hold a call
        forever), so a timer shuts the socket down when the deadline passes,
        whatever the exchange is waiting for.
        """
        url = urllib.parse.urlsplit(self.api_base + path)
        connection = (http.client.HTTPSConnection if url.scheme == "https"
                      else http.client.HTTPConnection)(url.hostname, url.port, timeout=self.timeout)
        expired, opened = threading.Event(), []

        def expire():
            expired.set()
            for sock in opened:  # the response keeps reading from it after the connection closes
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            connection.connect()  # bounded by the socket timeout
            opened.append(connection.sock)
            if expired.is_set():
                expire()
            target = url.path + (f"?{url.query}" if url.query else "")
            connection.request("POST", target, body=data, headers=headers)
            response = connection.getresponse()
            result = response.status, response.getheader("Location"), response.read()
        except (OSError, http.client.HTTPException):
            if not expired.is_set():
                raise
            result = None
        finally:
            timer.cancel()
            connection.close()
        if expired.is_set():  # a cut-short body may even have read without an error
            raise TimeoutError(f"no complete answer within {self.timeout:g} s")
        return result

    def _post(self, path: str, body: dict, parse):
        """``parse(json_reply)`` of the server's answer; ``parse`` raising
        ``ValueError``/``LookupError``/``TypeError`` marks the answer malformed."""
        url = self.api_base + path
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"

        def fail(message):  # the key never reaches a message, even if a server echoes it
            return LLMServerError(message.replace(key, "***") if key else message)

        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            last, tries = attempt == self.max_retries, f"after {attempt + 1} attempt(s)"
            try:
                status, location, raw = self._exchange(path, data, headers)
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out
                if last:
                    what = "timed out" if isinstance(err, TimeoutError) else "unreachable"
                    raise fail(f"{url} {what} {tries}: {err}") from None
            else:
                if 300 <= status < 400:
                    raise fail(f"{url} answered HTTP {status} redirecting to {location!r}; "
                               "redirects are refused")
                if status >= 400:
                    if last or (status != 429 and status < 500):
                        reason = http.client.responses.get(status, "")
                        raise fail(f"{url} answered HTTP {status} ({reason}) {tries}")
                else:
                    try:
                        return parse(json.loads(raw))
                    except (ValueError, LookupError, TypeError) as err:
                        if last:
                            snippet = raw[:200].decode("utf-8", "replace")
                            raise fail(f"{url} sent a malformed answer {tries} ({err}); "
                                       f"the body starts {snippet!r}") from None
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def complete(self, prompts, max_new_tokens=64, temperature=0.0):
        out = []
        if self.mode == "chat":
            for prompt in prompts:
                out.append(self._post("/chat/completions", {
                    "model": self.model, "max_tokens": max_new_tokens, "temperature": temperature,
                    "messages": [{"role": "user", "content": prompt}]},
                    lambda reply: _text(reply["choices"][0]["message"]["content"])))
            return out
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])

            def parse(reply, n=len(chunk)):
                texts = {choice["index"]: _text(choice["text"]) for choice in reply["choices"]}
                if sorted(texts) != list(range(n)):
                    raise ValueError(f"{len(reply['choices'])} choices for {n} prompts")
                return [texts[i] for i in range(n)]

            out.extend(self._post("/completions", {"model": self.model, "prompt": chunk,
                                                   "max_tokens": max_new_tokens,
                                                   "temperature": temperature}, parse))
        return out


class CachedClient(LLMClient):
    """Answers stored one JSON line each in ``<cache>/llm-answers.jsonl``.

    Appending whole lines makes the store resumable: a run killed mid-way
    keeps every answer already written, and a torn line is ignored (and ended
    before the next append, so later records stay readable).
    """

    def __init__(self, client: LLMClient, cache_dir: str, flush_every: int = 8,
                 show_progress: bool = True):
        self.client, self.flush_every, self.show_progress = client, flush_every, show_progress
        os.makedirs(cache_dir, exist_ok=True)
        self.path = os.path.join(cache_dir, "llm-answers.jsonl")
        self.answers = self._read()
        self.calls = 0  # prompts actually sent to the client

    @property
    def identity(self) -> str:
        return self.client.identity

    def _read(self) -> dict:
        answers = {}
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        answers[record["k"]] = record["v"]
                    except (ValueError, LookupError, TypeError):
                        continue  # torn write
        return answers

    def _append(self, answers: dict) -> None:
        """Append one line per answer.  A killed run may have left a torn last line
        without its newline; it is ended first, or the next record would be glued
        onto it and lost on reading.  Created with ``open()``'s usual mode."""
        data = "".join(json.dumps({"k": k, "v": v}) + "\n" for k, v in answers.items()).encode()
        with open(self.path, "a+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)  # one write: whole lines even with a concurrent appender
        self.answers.update(answers)

    def _key(self, prompt, max_new_tokens, temperature) -> str:
        text = json.dumps([self.client.identity, prompt, max_new_tokens, temperature])
        return hashlib.sha256(text.encode()).hexdigest()

    def complete(self, prompts, max_new_tokens=64, temperature=0.0):
        keys = [self._key(p, max_new_tokens, temperature) for p in prompts]
        seen, unique = set(), []
        for i, key in enumerate(keys):  # each missing prompt once
            if key not in self.answers and key not in seen:
                seen.add(keys[i])
                unique.append(i)
        for start in tqdm(range(0, len(unique), self.flush_every), desc="LLM calls",
                          disable=not self.show_progress or not unique, unit="batch"):
            chunk = unique[start:start + self.flush_every]
            texts = self.client.complete([prompts[i] for i in chunk], max_new_tokens, temperature)
            self.calls += len(chunk)
            self._append({keys[i]: text for i, text in zip(chunk, texts)})
        return [self.answers[k] for k in keys]


def client_from_config(config, model=None, tokenizer=None, cache_dir: str = None,
                       local_name: str = "local") -> LLMClient:
    """The configured client (``llm_api_base`` set: HTTP server; else the local backbone).
    ``local_name`` identifies the local weights (it keys cached answers)."""
    if config["llm_api_base"]:
        if not config["llm_api_model"]:
            raise ValueError("llm_api_base is set but llm_api_model is empty: name the served model")
        client = OpenAIClient(config["llm_api_base"], config["llm_api_model"],
                              config["llm_api_key_env"], config["llm_api_mode"],
                              config["llm_api_batch_size"], config["llm_api_timeout"],
                              config["llm_api_max_retries"])
    else:
        if model is None or tokenizer is None:
            raise ValueError("no llm_api_base set and no local model given")
        client = LocalClient(model, tokenizer, config["llm_generate_batch_size"], local_name)
    if cache_dir:
        client = CachedClient(client, cache_dir, show_progress=config["show_progress"])
    return client
