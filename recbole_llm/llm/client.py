"""One text-generation interface: the local backbone or an OpenAI-compatible server.

Llama4Rec (augmentation) and EIMF (semantic interests) ask an LLM for text.
``LocalClient`` runs the shared backbone; ``OpenAIClient`` talks to any
OpenAI-compatible endpoint (vLLM, Ollama, ...) with batching, retries with
exponential back-off and a timeout.  ``CachedClient`` stores every answer on
disk keyed by (client identity, prompt, decoding settings), so a re-run or a
resumed run never asks again.  The API key is read from an environment
variable at request time and is never logged, cached or checkpointed.
"""
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
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


class OpenAIClient(LLMClient):
    """``POST {api_base}/completions`` (prompts batched) or ``/chat/completions``."""

    def __init__(self, api_base: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 mode: str = "completions", batch_size: int = 16, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 1.0):
        if mode not in ("completions", "chat"):
            raise ValueError(f"llm_api_mode must be 'completions' or 'chat', not '{mode}'")
        self.api_base, self.model, self.api_key_env = api_base.rstrip("/"), model, api_key_env
        self.mode, self.batch_size, self.timeout = mode, batch_size, timeout
        self.max_retries, self.backoff = max_retries, backoff

    @property
    def identity(self) -> str:
        return f"openai:{self.api_base}:{self.model}:{self.mode}"

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.api_base + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as err:
                retryable = err.code == 429 or err.code >= 500
                if not retryable or attempt == self.max_retries:
                    raise LLMServerError(f"{self.api_base}{path} answered HTTP {err.code} "
                                         f"({err.reason}) after {attempt + 1} attempt(s)") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.max_retries:
                    raise LLMServerError(f"{self.api_base}{path} unreachable after "
                                         f"{attempt + 1} attempt(s): {err}") from None
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def complete(self, prompts, max_new_tokens=64, temperature=0.0):
        out = []
        if self.mode == "chat":
            for prompt in prompts:
                reply = self._post("/chat/completions", {
                    "model": self.model, "max_tokens": max_new_tokens, "temperature": temperature,
                    "messages": [{"role": "user", "content": prompt}]})
                out.append(reply["choices"][0]["message"]["content"])
            return out
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])
            reply = self._post("/completions", {"model": self.model, "prompt": chunk,
                                                "max_tokens": max_new_tokens,
                                                "temperature": temperature})
            texts = [None] * len(chunk)
            for choice in reply["choices"]:
                texts[choice["index"]] = choice["text"]
            if any(t is None for t in texts):
                raise LLMServerError(f"{self.api_base}/completions returned "
                                     f"{len(reply['choices'])} choices for {len(chunk)} prompts")
            out.extend(texts)
        return out


class CachedClient(LLMClient):
    """Answers stored one JSON line each in ``<cache>/llm-answers.jsonl``.

    Appending whole lines makes the store resumable: a run killed mid-way
    keeps every answer already written, and a torn last line is ignored.
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
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        answers[record["k"]] = record["v"]
                    except (json.JSONDecodeError, KeyError):
                        continue  # torn write
        return answers

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
            with open(self.path, "a", encoding="utf-8") as f:
                for i, text in zip(chunk, texts):
                    self.answers[keys[i]] = text
                    f.write(json.dumps({"k": keys[i], "v": text}) + "\n")
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
