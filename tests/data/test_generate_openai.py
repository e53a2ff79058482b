"""The `openai` backend against a real OpenAI-compatible server (`transformers serve`, started on
loopback by the test) and, for failures a real server does not produce on demand, a loopback stub
that speaks the same protocol."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import torch

from helpers import tiny_llama_config, write_jsonl
from draftheads.data.config import OpenAIBackendConfig
from draftheads.data.distill import run_distill
from draftheads.data.generate_hf import GenRequest
from draftheads.data.generate_openai import OpenAIGenerator, ServerError
from draftheads.decoding.sampling import SamplingConfig
from draftheads.train.config import load_recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_base(tmp_path_factory, demo_tokenizer):
    """A tiny Llama folder served by `transformers serve` on a loopback port."""
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("served-base")
    torch.manual_seed(1)
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer), init_std=0.3)).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    port = free_port()
    log = (folder / "serve.log").open("w")
    server = subprocess.Popen(
        ["transformers", "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
        assert server.poll() is None, (folder / "serve.log").read_text()[-2000:]
    else:
        server.kill()
        pytest.fail("transformers serve did not start: " + (folder / "serve.log").read_text()[-2000:])
    yield folder, url
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow  # starts a real `transformers serve` process: about 20 s
def test_a_real_server_answers_exactly_what_the_hf_backend_generates(served_base, tmp_path):
    folder, url = served_base
    records = [
        {
            "id": f"p{i}",
            "conversations": [
                {"from": "human", "value": f"Tell me {i} things."},
                {"from": "gpt", "value": "old"},
                {"from": "human", "value": "And one more?"},
            ],
        }
        for i in range(3)
    ]
    data = write_jsonl(tmp_path / "p.jsonl", records)
    common = [f"model.base={folder}", f'distill.sources=[{{"path": "{data}"}}]', "distill.max_new_tokens=12"]
    served = run_distill(load_recipe(None, common + [f"distill.output_dir={tmp_path / 'served'}", "distill.backend=openai",
                                                     f"distill.openai.base_url={url}", "distill.openai.concurrency=3"]), progress=False)
    local = run_distill(load_recipe(None, common + [f"distill.output_dir={tmp_path / 'local'}"]), progress=False)
    assert served.complete and served.counts["answers"] == 6
    # Greedy, same weights, same chat template: the server's answers (turn 2 after its own turn 1)
    # are the hf backend's, token for token.
    strip = lambda out: [{k: v for k, v in json.loads(line).items()} for line in (out / "data.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "served") == strip(tmp_path / "local")
    assert served.counts["answer_tokens"] == local.counts["answer_tokens"]
    metadata = json.loads((tmp_path / "served" / "metadata.json").read_text())
    assert metadata["settings"]["backend"] == "openai" and metadata["settings"]["server_model"] == str(folder)


class _Stub(BaseHTTPRequestHandler):
    """Answers chat completions as scripted by the server's `script` list of (status, body)."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.headers.get("Authorization"), body))
        status, payload = self.server.script.pop(0) if self.server.script else (200, None)
        if payload is None:
            payload = {"choices": [{"message": {"role": "assistant", "content": f"echo {body['messages'][-1]['content']}"},
                                    "finish_reason": "stop"}], "usage": {"completion_tokens": 3}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.script, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def request(text: str) -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], [1, 2, 3], 8, seed=5)


def test_retries_with_backoff_then_succeeds_and_sends_the_key(stub, monkeypatch):
    server, url = stub
    server.script += [(503, {"error": {"message": "overloaded"}}), (429, {"error": "slow down"})]
    monkeypatch.setenv("MY_KEY", "sk-secret")
    generator = OpenAIGenerator(OpenAIBackendConfig(base_url=url, api_key_env="MY_KEY", backoff=0.01), "m", SamplingConfig(0.5, 0.9))
    answer = generator.generate([request("hello")])[0]
    assert (answer.text, answer.tokens, answer.finish_reason) == ("echo hello", 3, "stop")
    assert generator.retries == 2 and len(server.seen) == 3
    auth, body = server.seen[-1]
    assert auth == "Bearer sk-secret"
    assert body["seed"] == 5 and body["temperature"] == 0.5 and body["top_p"] == 0.9 and body["max_tokens"] == 8 and body["model"] == "m"


def test_giving_up_and_auth_failures_are_clear_and_never_show_the_key(stub, monkeypatch):
    server, url = stub
    monkeypatch.setenv("MY_KEY", "sk-secret")
    server.script += [(503, {"error": "down"})] * 3
    generator = OpenAIGenerator(OpenAIBackendConfig(base_url=url, api_key_env="MY_KEY", max_retries=2, backoff=0.01), "m", SamplingConfig())
    with pytest.raises(ServerError, match=r"gave up after 3 attempts: HTTP 503: down"):
        generator.generate([request("x")])
    server.script += [(401, {"error": {"message": "invalid api key"}})]
    with pytest.raises(ServerError) as err:
        generator.generate([request("x")])
    assert "HTTP 401: invalid api key" in str(err.value) and "sk-secret" not in str(err.value)
    closed = OpenAIGenerator(
        OpenAIBackendConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff=0.01), "m", SamplingConfig()
    )
    with pytest.raises(ServerError, match="connection failed"):
        closed.generate([request("x")])


def test_a_request_the_server_refuses_skips_that_conversation_only(stub, tmp_path, tiny_base):
    server, url = stub
    server.script += [(400, {"error": {"message": "prompt is too long for the context"}})]
    data = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "first"}])
    recipe = load_recipe(None, [f"model.base={tiny_base}", f'distill.sources=[{{"path": "{data}"}}]', "distill.backend=openai",
                                f"distill.openai.base_url={url}", f"distill.output_dir={tmp_path / 'out'}"])
    result = run_distill(recipe, progress=False)
    assert result.complete and result.counts["conversations"] == 0
    assert result.counts["skipped"] == {"rejected: HTTP 400: prompt is too long for the context": 1}
