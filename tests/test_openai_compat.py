"""Drop-in OpenAI compatibility: clients that send no extra fields (the default mix, presets as model
ids, 404 for unknown ones), stop strings, logprobs, n > 1 with streaming, malformed messages, and
the statuses and content types the OpenAPI schema declares."""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")

import lerplm  # noqa: E402
from lerplm.engine import SamplingParams, Sequence  # noqa: E402
from lerplm.mix import Mix  # noqa: E402
from lerplm.serve.app import create_app  # noqa: E402

from .test_serve import Server  # noqa: E402

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def served(anchor_dir):
    lm = lerplm.load(anchor_dir, device="cpu")
    app = create_app(lm, presets={"formal": Mix({"formality": 1.0}), "cheerful": Mix({"sentiment": 0.9})})
    with Server(app) as s:
        yield s, openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0), lm


def test_a_plain_client_gets_the_base_model_and_presets_are_model_ids(served):
    s, c, lm = served
    ids = [m.id for m in c.models.list().data]
    assert ids == [s.model, "formal", "cheerful"]
    plain = c.chat.completions.create(model=s.model, messages=HELLO, max_tokens=10, temperature=0)
    seq = Sequence(lm.prompt_ids(["hello"])[0], [0.0] * 4, SamplingParams(10, 0), 0)
    lm.engine(max_batch=1, max_len=64).run([seq])
    assert plain.choices[0].message.content.strip() == lm.text(seq.tokens)
    formal = c.chat.completions.create(model="formal", messages=HELLO, max_tokens=10, temperature=0)
    explicit = c.chat.completions.create(
        model=s.model, messages=HELLO, max_tokens=10, temperature=0, extra_body={"mix": {"formality": 1.0}}
    )
    assert formal.choices[0].message.content == explicit.choices[0].message.content
    assert formal.model == "formal"
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=4)
    assert "formal" in str(e.value) and "cheerful" in str(e.value)
    assert c.models.retrieve("formal").id == "formal"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")


def test_stream_options_include_usage_sends_the_usage_last(served):
    s, c, _ = served
    args = dict(model=s.model, messages=HELLO, max_tokens=6, n=2, seed=1, extra_body={"ignore_eos": True})
    chunks = list(c.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and all(ch.choices for ch in chunks[:-1])
    assert chunks[-1].usage.model_dump() == c.chat.completions.create(**args).usage.model_dump()
    assert chunks[-1].usage.completion_tokens == 12
    plain = list(c.chat.completions.create(**args, stream=True))
    assert all(ch.choices and ch.usage is None for ch in plain)


def test_the_default_mix_serves_requests_without_one(anchor_dir):
    lm = lerplm.load(anchor_dir, device="cpu")
    with Server(create_app(lm, default_mix=Mix({"sentiment": 1.0}))) as s:
        body = {"prompt": "the food was", "max_tokens": 8, "temperature": 0}
        plain = httpx.post(s.url + "/v1/completions", json=body, timeout=30).json()
        mixed = httpx.post(s.url + "/v1/completions", json=body | {"mix": {"sentiment": 1.0}}, timeout=30).json()
        other = httpx.post(s.url + "/v1/completions", json=body | {"mix": {"sentiment": 0.0}}, timeout=30).json()
    assert plain["choices"][0]["text"] == mixed["choices"][0]["text"] != other["choices"][0]["text"]


def test_completions_continue_the_text_and_chat_true_answers_it_as_generate_does(served):
    s, c, lm = served
    for chat in (False, True):
        r = c.completions.create(
            model=s.model, prompt="the food was", max_tokens=8, temperature=0, extra_body={"chat": chat}
        )
        want = lm.generate("the food was", None, chat=chat, max_new_tokens=8, temperature=0)[0][0]
        # the same tokens; the server holds back a character cut at the end, generate strips the text
        assert r.choices[0].text.strip() == want.rstrip("\ufffd").strip()
    raw, chat = lm.prompt_ids(["the food was"], chat=False)[0], lm.prompt_ids(["the food was"], chat=True)[0]
    assert len(raw) < len(chat)  # the tiny model has a chat template: the two reads differ
    for bad, message in (
        ({"prompt": ""}, "must not be empty"),
        ({"prompt": "hi", "echo": True, "stream": True}, "echo cannot stream"),
    ):
        r = httpx.post(s.url + "/v1/completions", json=bad, timeout=30)
        assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_stop_strings_cut_the_text_streaming_or_not(served):
    s, c, _ = served
    full = c.completions.create(model=s.model, prompt="the food was", max_tokens=24, temperature=0)
    text = full.choices[0].text
    assert len(text) > 6
    stop = text[3:5]  # two characters from inside the answer
    want = text[: text.index(stop)]
    cut = c.completions.create(
        model=s.model, prompt="the food was", max_tokens=24, temperature=0, stop=[stop, "\x00never"]
    )
    assert cut.choices[0].text == want and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens
    streamed = c.completions.create(
        model=s.model, prompt="the food was", max_tokens=24, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(ch.choices[0].text for ch in chunks) == want and chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_are_real_values(served):
    s, c, _ = served
    r = c.chat.completions.create(
        model=s.model, messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)  # greedy: the chosen token is the most likely
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
    comp = c.completions.create(model=s.model, prompt="the food was", max_tokens=5, temperature=0, logprobs=2)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) >= 1
    assert all(len(t) <= 2 for t in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    none = c.completions.create(model=s.model, prompt="the food was", max_tokens=3)
    assert none.choices[0].logprobs is None


def test_n_greater_than_one_streams_every_choice(served):
    s, c, _ = served
    chunks = list(c.chat.completions.create(model=s.model, messages=HELLO, max_tokens=6, n=3, seed=4, stream=True))
    assert {ch.choices[0].index for ch in chunks} == {0, 1, 2}
    whole = c.chat.completions.create(model=s.model, messages=HELLO, max_tokens=6, n=3, seed=4)
    for i in range(3):
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices[0].index == i)
        assert text == whole.choices[i].message.content


@pytest.mark.parametrize(
    "messages, where",
    [
        ([{"role": "user"}], "messages.0.content"),
        ([{"role": "robot", "content": "hi"}], "messages.0.role"),
        ([], "messages"),
    ],
)
def test_malformed_messages_get_400(served, messages, where):
    s, _, _ = served
    r = httpx.post(s.url + "/v1/chat/completions", json={"messages": messages}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith(where)


def test_content_parts_are_accepted(served):
    s, c, _ = served
    parts = [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}]
    a = c.chat.completions.create(model=s.model, messages=parts, max_tokens=6, temperature=0)
    b = c.chat.completions.create(model=s.model, messages=HELLO, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    r = httpx.post(s.url + "/v1/chat/completions", json={"messages": image}, timeout=30)
    assert r.status_code == 400 and "got 'image_url'" in r.json()["error"]["message"]
    tools_turn = [*HELLO, {"role": "assistant", "content": None}, {"role": "user", "content": "and?"}]
    r = httpx.post(s.url + "/v1/chat/completions", json={"messages": tools_turn, "max_tokens": 3}, timeout=30)
    assert r.status_code == 200, r.text


def test_the_openapi_schema_declares_every_status_and_content_type(served):
    s, _, _ = served
    spec = httpx.get(s.url + "/openapi.json").json()
    for route in ("/v1/completions", "/v1/chat/completions"):
        responses = spec["paths"][route]["post"]["responses"]
        assert {"200", "400", "401", "404", "500", "503"} <= set(responses)
        assert {"application/json", "text/event-stream"} <= set(responses["200"]["content"])


def test_langchain_chat_openai_with_no_extra_fields(served):
    lc = pytest.importorskip("langchain_openai")
    s, _, _ = served
    chat = lc.ChatOpenAI(
        base_url=s.url + "/v1", api_key="none", model="cheerful", max_tokens=8, temperature=0, max_retries=0
    )
    assert isinstance(chat.invoke("hello").content, str)
    assert "".join(chunk.content for chunk in chat.stream("hello")) == chat.invoke("hello").content


def test_a_schedule_in_the_mix_field_and_the_live_route(served):
    s, _, _ = served
    body = {
        "prompt": "the food was",
        "max_tokens": 8,
        "temperature": 0,
        "mix": {
            "schedule": [{"at": 0, "levels": {"sentiment": 0.0}}, {"at": 4, "levels": {"sentiment": 1.0}}],
            "interpolate": "step",
        },
    }
    r = httpx.post(s.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
    bad = httpx.post(
        s.url + "/v1/completions", json=body | {"mix": {"schedule": [{"at": 5, "levels": {}}, {"at": 2, "levels": {}}]}}
    )
    assert bad.status_code == 400
    gone = httpx.post(s.url + "/v1/streams/cmpl-none/mix", json={"mix": {"sentiment": 1.0}})
    assert gone.status_code == 404 and "no running request" in gone.json()["error"]["message"]


def test_a_live_change_with_reencode_rereads_the_text_so_far(anchor_dir):
    """With reencode the engine re-reads prompt + tokens under the new mix, so the stream equals a step
    schedule switching at the token the change took effect (greedy, same text)."""
    import json
    import time

    lm = lerplm.load(anchor_dir, device="cpu")
    with Server(create_app(lm)) as s:
        engine = s.app.state.engine
        engine.eos = set()
        step = engine.model
        engine.model = lambda plan, cache: (time.sleep(0.02), step(plan, cache))[1]  # slow enough to act mid-stream
        body = {"prompt": "the food was", "max_tokens": 30, "temperature": 0, "mix": {"sentiment": 0.0}}
        text, last = "", None
        with httpx.stream("POST", s.url + "/v1/completions", json=body | {"stream": True}, timeout=60) as r:
            for i, line in enumerate(x for x in r.iter_lines() if x.startswith("data: {")):
                last = json.loads(line[6:])
                text += last["choices"][0]["text"]
                if i == 4:
                    httpx.post(
                        s.url + f"/v1/streams/{last['id']}/mix", json={"mix": {"formality": 1.0}, "reencode": True}
                    )
        switch = last["mix_log"][1]["token"]
        assert 0 < switch < 30
        sched = {
            "schedule": [{"at": 0, "levels": {"sentiment": 0.0}}, {"at": switch, "levels": {"formality": 1.0}}],
            "interpolate": "step",
        }
        want = httpx.post(s.url + "/v1/completions", json=body | {"mix": sched}, timeout=60).json()["choices"][0][
            "text"
        ]
        assert text == want
        plain = httpx.post(s.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        assert text != plain
