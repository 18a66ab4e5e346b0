"""The server on loopback with a tiny model: the openai client, streaming, mixes per request,
batching invariance, bad input, API keys, cancellation, and queue overflow."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

import uvicorn  # noqa: E402

import lerplm  # noqa: E402
from lerplm.serve.app import create_app  # noqa: E402


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def model(self) -> str:
        """The model id the server lists first: the anchor set's, serving the default mix."""
        return self.app.state.lm.anchors.root.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)


def make_server(anchor_dir, **kwargs) -> Server:
    return Server(create_app(lerplm.load(anchor_dir, device="cpu"), **kwargs))


@pytest.fixture(scope="module")
def server(anchor_dir):
    with make_server(anchor_dir) as s:
        yield s


def client(server, key="none"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


MIX = {"levels": {"sentiment": 0.8, "formality": 0.2}}


def test_openai_client_completions_chat_and_streaming(server):
    c = client(server)
    r = c.completions.create(model=server.model, prompt="the food was", max_tokens=8, seed=1, extra_body={"mix": MIX})
    assert (
        r.object == "text_completion"
        and r.choices[0].finish_reason in ("stop", "length")
        and r.usage.completion_tokens >= 1
    )
    chat = c.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        seed=1,
        extra_body={"mix": {"alpha": {"sentiment": 0.1}, "lambda": {"sentiment": 1}}},
    )
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    pieces = [
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            seed=1,
            stream=True,
            extra_body={"mix": {"alpha": {"sentiment": 0.1}, "lambda": {"sentiment": 1}}},
        )
    ]
    assert "".join(pieces) == chat.choices[0].message.content  # streamed = whole, same seed
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model=server.model, prompt="the food was", max_tokens=8, seed=1, stream=True, extra_body={"mix": MIX}
        )
    )
    assert streamed == r.choices[0].text
    assert [m.id for m in c.models.list().data] == [server.app.state.lm.anchors.root.name]


def test_mix_changes_the_output(server):
    c = client(server)
    outs = {
        c.completions.create(
            model=server.model,
            prompt="the food was",
            max_tokens=12,
            temperature=0,
            extra_body={"mix": {"sentiment": lvl}},
        )
        .choices[0]
        .text
        for lvl in (0.0, 1.0)
    } | {
        c.completions.create(
            model=server.model,
            prompt="the food was",
            max_tokens=12,
            temperature=0,
            extra_body={"mix": {"formality": 1.0}},
        )
        .choices[0]
        .text
    }
    assert len(outs) > 1


def test_a_mix_written_as_the_cli_writes_it_equals_its_mapping(server):
    def text(mix) -> str:
        body = {"prompt": "the food was", "max_tokens": 8, "seed": 3, "temperature": 0.9, "mix": mix}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    assert text("sentiment=0.9,formality=0.2") == text({"levels": {"sentiment": 0.9, "formality": 0.2}})


def test_concurrent_requests_with_different_mixes_equal_the_same_requests_alone(server):
    c = client(server)
    jobs = [("the food was", {"sentiment": i / 5}, 10 + i) for i in range(6)] + [("could you", {"formality": 0.3}, 99)]

    def one(job):
        prompt, mix, seed = job
        return (
            c.completions.create(
                model=server.model, prompt=prompt, max_tokens=16, seed=seed, temperature=0.9, extra_body={"mix": mix}
            )
            .choices[0]
            .text
        )

    alone = [one(j) for j in jobs]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(one, jobs))
    assert together == alone


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "hi", "mix": {"levels": {"tone": 0.5}}}, "unknown attribute 'tone'"),
        ({"prompt": "hi", "mix": {"levels": {"sentiment": 1.5}}}, "must lie in [0, 1]"),
        ({"prompt": "hi", "mix": {"levels": {"sentiment": "high"}}}, "must be a number"),
        ({"prompt": "hi", "mix": {"levels": {"sentiment": 0.5}}, "temperature": "hot"}, "temperature"),
        ({"prompt": "hi", "mix": {"levels": {"sentiment": 0.5}}, "max_tokens": -5}, "max_tokens must lie in [1, 512]"),
        (
            {"prompt": "hi", "mix": {"levels": {"sentiment": 0.5}}, "max_tokens": 100000},
            "max_tokens must lie in [1, 512]",
        ),
        ({"prompt": "word " * 3000, "mix": {"levels": {"sentiment": 0.5}}}, "the limit is 1024"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "up to 4"),
        ({"prompt": "hi", "seed": 2**70}, "seed must lie in"),
        ({"prompt": "hi", "logprobs": 9}, "logprobs must be an integer in [0, 5]"),
        ({"prompt": "hi", "max_tokens": 4, "min_tokens": 5}, "min_tokens must lie in [0, max_tokens]"),
        ({"prompt": 5, "mix": {"levels": {"sentiment": 0.5}}}, "prompt"),
        ({"mix": {"levels": {"sentiment": 0.5}}}, "prompt: Field required"),
        ({"prompt": [1, 2, 99999999]}, "prompt token ids must lie in [0, "),
        ({"prompt": [[1, 2], []]}, "prompt must not be empty"),
        ({"prompt": [1, 2], "chat": True}, "token ids are taken as they are"),
        ({"prompt": ["a", [1, 2]]}, "prompt"),
        ({"prompt": "hi", "n": 0}, "n must lie in [1, 8]"),
        ({"prompt": "hi", "temperature": float("nan")}, "temperature must be a finite number"),
        ({"prompt": "hi", "temperature": float("inf")}, "temperature must be a finite number"),
        ({"prompt": "hi", "mix": "sentiment=high"}, "'high' is not a number"),
        ({"prompt": "hi", "presence_penalty": 2.5}, "presence_penalty must lie in [-2, 2]"),
        ({"prompt": "hi", "frequency_penalty": -3}, "frequency_penalty must lie in [-2, 2]"),
        ({"prompt": "hi", "logit_bias": {"the": 1}}, "logit_bias keys must be token ids"),
        ({"prompt": "hi", "logit_bias": {"99999999": 1}}, "logit_bias keys must be token ids"),
        ({"prompt": "hi", "logit_bias": {"5": 500}}, "logit_bias values must lie in [-100, 100]"),
    ],
)
def test_bad_input_gets_an_openai_style_400(server, body, message):
    raw = json.dumps(body)  # NaN and Infinity as JavaScript writes them, which httpx's json= refuses
    headers = {"content-type": "application/json"}
    r = httpx.post(server.url + "/v1/completions", content=raw, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"


def test_token_id_prompts_are_the_text_they_encode(server):
    """/v1/completions takes token ids as OpenAI's does (one list, or a list of lists): the same greedy answer
    as the text they encode, one choice per prompt."""
    c = client(server)
    ids = server.app.state.lm.prompt_ids(["the food was", "worst"], chat=False)

    def greedy(prompt) -> list[str]:
        r = c.completions.create(model=server.model, prompt=prompt, max_tokens=6, temperature=0)
        return [ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)]

    assert greedy(ids[0]) == greedy("the food was")
    assert greedy(ids) == greedy(["the food was", "worst"])


def test_echo_scores_the_prompt_under_the_mix(server):
    """``echo`` with ``logprobs`` (how lm-eval's local-completions scores a text): one entry per prompt token, the
    first without a logprob, the rest the exact model's log-probabilities under the request's mix, then the new
    tokens'; ``max_tokens: 0`` scores the prompt alone; the text starts with the prompt."""
    c = client(server)
    lm = server.app.state.lm
    ids = lm.prompt_ids(["the food was really"], chat=False)[0]
    scored = c.completions.create(
        model=server.model, prompt=ids, max_tokens=0, echo=True, logprobs=2, extra_body={"mix": MIX}
    )
    lp = scored.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) and lp.token_logprobs[0] is None and scored.usage.completion_tokens == 0
    coeffs = lm.coefficients([MIX])
    want = torch.log_softmax(lm.logits(torch.tensor([ids]), coeffs)[0, :-1].float(), -1)
    want = want[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert torch.allclose(torch.tensor(lp.token_logprobs[1:]), want, atol=1e-4)
    assert all(len(top) == 2 and max(top.values()) >= t for top, t in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))
    base = c.completions.create(model=server.model, prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert base.choices[0].logprobs.token_logprobs[1:] != lp.token_logprobs[1:]  # the mix changes the scores
    assert scored.choices[0].text == lm.tokenizer.decode(ids)
    plain = c.completions.create(model=server.model, prompt="the food was", max_tokens=4, temperature=0)
    both = c.completions.create(
        model=server.model, prompt="the food was", max_tokens=4, temperature=0, echo=True, logprobs=1
    )
    assert both.choices[0].text == "the food was" + plain.choices[0].text
    n_prompt = len(lm.prompt_ids(["the food was"], chat=False)[0])
    assert len(both.choices[0].logprobs.tokens) == n_prompt + both.usage.completion_tokens
    offsets = both.choices[0].logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[n_prompt] == len("the food was")
    # lm-eval's local-completions: context + continuation as token ids, the continuation's logprobs read off
    # token_logprobs[len(context):-1] (the last entry is the one new token)
    context, continuation = ids[:3], ids[3:]
    payload = {"model": server.model, "prompt": [context + continuation], "temperature": 0, "max_tokens": 1}
    r = httpx.post(server.url + "/v1/completions", json=payload | {"logprobs": 1, "seed": 1234, "echo": True})
    choice = r.json()["choices"][0]["logprobs"]
    base_want = torch.log_softmax(lm.logits(torch.tensor([ids]), None)[0, :-1].float(), -1)  # the default mix: base
    base_want = base_want[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    got = choice["token_logprobs"][len(context) : -1]
    assert len(got) == len(continuation) and torch.allclose(torch.tensor(got), base_want[2:], atol=1e-4)
    assert all(max(top.values()) >= t for top, t in zip(choice["top_logprobs"][len(context) : -1], got))


def test_tokenizer_routes_as_vllm_serves_them(server):
    """/tokenizer_info, /tokenize and /detokenize (what lm-eval's remote tokenizer reads): a text's ids as the
    model's tokenizer gives them, chat messages as the chat endpoint reads them, and ids back to the text."""
    tok = server.app.state.lm.tokenizer
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["chat_template"] == tok.chat_template
    r = httpx.post(server.url + "/tokenize", json={"prompt": "the food was", "add_special_tokens": False}).json()
    assert r["tokens"] == tok("the food was", add_special_tokens=False)["input_ids"] and r["count"] == len(r["tokens"])
    messages = [{"role": "user", "content": "Say hi."}]
    chat = httpx.post(server.url + "/tokenize", json={"messages": messages}).json()
    used = client(server).chat.completions.create(model=server.model, messages=messages, max_tokens=1)
    assert chat["count"] == used.usage.prompt_tokens
    back = httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}).json()
    assert back["prompt"] == "the food was"
    for path, body, message in (
        ("/tokenize", {}, "either 'prompt' or 'messages'"),
        ("/tokenize", {"prompt": "a", "messages": messages}, "either 'prompt' or 'messages'"),
        ("/detokenize", {"tokens": [-1]}, "token ids in [0, "),
        ("/tokenize", {"prompt": "a", "model": "nope"}, "nope"),
    ):
        bad = httpx.post(server.url + path, json=body)
        assert bad.status_code in (400, 404) and message in bad.json()["error"]["message"]


def test_logit_bias_and_penalties_reach_the_sampler(server):
    """OpenAI's fields through the openai client: a bias of +100 writes that token every time (greedy), and a
    frequency penalty changes a greedy answer; the same body without them is the model's plain answer."""
    c = client(server)
    tok = server.app.state.lm.tokenizer
    token = tok("the")["input_ids"][0]
    r = c.completions.create(
        model=server.model, prompt="worst", max_tokens=5, temperature=0, logit_bias={str(token): 100}
    )
    assert r.choices[0].text == tok.decode([token] * 5)

    def greedy(**extra) -> str:
        return (
            c.completions.create(model=server.model, prompt="worst", max_tokens=24, temperature=0, **extra)
            .choices[0]
            .text
        )

    assert greedy(frequency_penalty=2.0) != greedy() == greedy(frequency_penalty=0.0, presence_penalty=0.0)


def test_ignore_eos_and_min_tokens_hold_the_end_back(server):
    """vLLM's and llama.cpp's fields: ignore_eos writes exactly max_tokens, min_tokens at least that many."""

    def complete(**extra):
        body = {"prompt": "worst", "max_tokens": 40, "temperature": 2.0} | extra
        return httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()

    # a seed whose answer ends early (the tiny model writes its end token now and then at temperature 2)
    seed, natural = next((s, r) for s in range(200) if (r := complete(seed=s))["choices"][0]["finish_reason"] == "stop")
    n = natural["usage"]["completion_tokens"]
    r = complete(seed=seed, ignore_eos=True)
    assert r["usage"]["completion_tokens"] == 40 and r["choices"][0]["finish_reason"] == "length"
    assert complete(seed=seed, min_tokens=n + 1)["usage"]["completion_tokens"] > n


def test_malformed_json_and_unknown_routes_then_the_server_still_serves(server):
    r = httpx.post(
        server.url + "/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] is None
    for body in (b"[]", b"null"):  # valid JSON, not an object
        r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        err = r.json()["error"]
        assert r.status_code == 400 and err["message"].startswith("request body: ") and err["param"] is None
    assert httpx.get(server.url + "/v1/nothing").status_code == 404
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    ok = client(server).completions.create(model=server.model, prompt="hi", max_tokens=3, extra_body={"mix": MIX})
    assert ok.choices[0].text is not None


def test_attributes_metrics_and_page(server):
    attrs = httpx.get(server.url + "/v1/attributes").json()["attributes"]
    assert [(a["name"], a["negative"], a["positive"]) for a in attrs] == [
        ("sentiment", "negative", "positive"),
        ("formality", "informal", "formal"),
    ]
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "lerplm_requests_total",
        "lerplm_generated_tokens_total",
        "lerplm_queue_depth",
        "lerplm_batch_size",
        "lerplm_request_latency_seconds",
    ):
        assert name in text
    assert "/v1/chat/completions" in httpx.get(server.url + "/").text
    for path in ("/v1/streams/a/mix", "/v1/streams/b/mix", "/v1/models/x", "/v1/models/y", "/nothing/1", "/nothing/2"):
        httpx.post(server.url + path, json={})
    counted = {
        line.split('route="')[1].split('"')[0]
        for line in httpx.get(server.url + "/metrics").text.splitlines()
        if line.startswith("lerplm_requests_total{")
    }
    assert {"/v1/streams/{stream_id}/mix", "/v1/models/{model}", "unmatched"} <= counted  # one label per route
    assert not any(label.startswith(("/v1/streams/a", "/v1/models/x", "/nothing")) for label in counted)


def test_api_key_is_enforced(anchor_dir):
    with make_server(anchor_dir, api_key="s3cret") as s:
        r = httpx.get(s.url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
        assert (
            client(s, "s3cret")
            .completions.create(model=s.model, prompt="hi", max_tokens=2, extra_body={"mix": MIX})
            .choices
        )
        assert httpx.get(s.url + "/health").status_code == 200  # not an API route
        assert httpx.post(s.url + "/tokenize", json={"prompt": "hi"}).status_code == 401
        ok = httpx.post(s.url + "/tokenize", json={"prompt": "hi"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_cancelled_stream_frees_its_row(anchor_dir):
    with make_server(anchor_dir) as s:
        engine = s.app.state.engine
        engine.eos = set()  # rows end only by max_tokens or cancellation
        with httpx.stream(
            "POST",
            s.url + "/v1/completions",
            timeout=30,
            json={"prompt": "hi", "max_tokens": 200, "stream": True, "mix": MIX},
        ) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
        deadline = time.time() + 10
        while engine.batch_size and time.time() < deadline:
            time.sleep(0.05)
        assert engine.batch_size == 0 and engine.stats.tokens < 200


def test_queue_overflow_answers_503(anchor_dir):
    with make_server(anchor_dir, max_batch=1, max_queue=1) as s:
        s.app.state.engine.eos = set()
        body = {"prompt": "hi", "max_tokens": 200, "mix": MIX}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            rs = list(pool.map(lambda _: httpx.post(s.url + "/v1/completions", json=body, timeout=60), range(4)))
        busy = [r for r in rs if r.status_code == 503]
        assert busy and busy[0].headers["retry-after"] == "1" and busy[0].json()["error"]["type"] == "server_busy"
        assert any(r.status_code == 200 for r in rs)


def test_an_address_in_use_fails_before_the_model_loads(anchor_dir, monkeypatch):
    from lerplm.errors import LerpError
    from lerplm.generate import LerpModel
    from lerplm.serve.server import serve

    monkeypatch.setattr(LerpModel, "load", lambda *a, **k: pytest.fail("the model loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LerpError, match="cannot listen on 127.0.0.1:.*in use"):
            serve(anchor_dir, port=taken.getsockname()[1])
