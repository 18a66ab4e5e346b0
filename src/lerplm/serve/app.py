"""The HTTP layer: OpenAI-compatible completions and chat completions with an extra ``mix`` field,
server-sent-event streaming, bearer-key access, Prometheus metrics, and the slider page at ``/``."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..engine import QueueFull, SamplingParams, Sequence
from ..errors import LerpError
from ..generate import LerpModel, to_mix
from ..mix import Mix, Schedule

API_KEY_ENV = "LERPLM_API_KEY"
STATIC = Path(__file__).with_name("static")


def _field_path(loc: tuple) -> str:
    """A validation error's field, without "body" and pydantic's names of union members ("str", "list[TextPart]")."""
    members = ("str", "int", "float", "bool")
    return ".".join(str(x) for x in loc if x not in ("body", *members) and not str(x).startswith(("list[", "dict[")))


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, headers=None
    ):
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with no choices and the request's usage, as OpenAI sends it


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None)
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None  # token id (as a string, as OpenAI's JSON has it) -> bias
    min_tokens: int = 0  # vLLM's field: the end tokens are held back until this many tokens are written
    ignore_eos: bool = False  # vLLM's and llama.cpp's field: write exactly max_tokens
    n: int = 1
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logprobs: bool | int | None = None  # chat: true/false (+ top_logprobs); completions: 0-5 alternatives
    top_logprobs: int | None = None
    mix: dict[str, Any] | str | None = None  # a mapping, or the CLI's "sentiment=0.9,formality=0.3"
    target: dict[str, float] | None = None  # target scores; the solved mix comes back in the response
    free_weights: bool = False
    user: str | None = None


class CompletionBody(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]  # text, or token ids (taken as they are)
    chat: bool = False  # lerplm's field: each prompt as the user turn of the chat template, as `generate` reads it
    echo: bool = False  # each choice's text (and logprobs) starts with its prompt's


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None  # null: an assistant turn that only called tools

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        for part in v if isinstance(v, list) else []:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise ValueError(f"only text content parts can be read, got {kind!r}")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatBody(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


class TokenizeBody(BaseModel):
    """vLLM's /tokenize: a text, or chat messages read through the chat template."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int]


class LiveMix(BaseModel):
    mix: dict[str, Any] | str
    index: int = 0  # which choice, for n > 1
    reencode: bool = (
        False  # also re-read the text so far under the new mix (one prefill) instead of from the next token only
    )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lerplm_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.tokens = Counter("lerplm_generated_tokens_total", "Generated tokens", registry=self.registry)
        self.queue = Gauge("lerplm_queue_depth", "Requests waiting for a batch slot", registry=self.registry)
        self.batch = Gauge("lerplm_batch_size", "Rows in the running batch", registry=self.registry)
        self.latency = Histogram(
            "lerplm_request_latency_seconds", "Time from request to last token", ["route"], registry=self.registry
        )


def create_app(
    lm: LerpModel,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    max_tokens_limit: int = 512,
    max_prompt_tokens: int = 1024,
    default_max_tokens: int = 64,
    engine_thread: bool = True,
    default_mix: Mix | None = None,
    presets: dict[str, Mix] | None = None,
) -> FastAPI:
    """The FastAPI app. With ``engine_thread`` the engine runs on a thread that starts and stops with
    the app; without, the caller runs ``app.state.engine.loop()`` (``lerplm serve`` does, on the main
    thread: torch's OpenMP kernels run ~1.5x slower on a thread other than the first that used them).

    A request without ``mix`` runs ``default_mix`` (None: the base model alone); each preset is served
    as a model id of its own, so ``model="NAME"`` selects its mix from any OpenAI client."""
    engine = lm.engine(max_batch=max_batch, max_len=max_prompt_tokens + max_tokens_limit, max_queue=max_queue)
    metrics = Metrics()
    hooks = {"on_startup": [engine.start], "on_shutdown": [engine.stop]} if engine_thread else {}
    app = FastAPI(title="lerplm", version="0.1.0", **hooks)
    app.state.engine, app.state.metrics, app.state.lm = engine, metrics, lm
    model_id = lm.anchors.root.name or "lerplm"
    names = lm.anchors.names
    base_mixes = {model_id: default_mix.coefficients(names) if default_mix else [0.0] * len(lm.adapters)}
    base_mixes |= {name: m.coefficients(names) for name, m in (presets or {}).items()}

    # -- errors, OpenAI style -------------------------------------------------------------------
    def error(
        status: int, message: str, type_: str = "invalid_request_error", param=None, headers=None
    ) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": type_, "param": param, "code": None}}, status, headers=headers
        )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error(e.status, e.message, e.type, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first["type"] == "json_invalid":  # its loc is a character offset, not a field
            return error(400, "request body is not valid JSON")
        where = _field_path(first["loc"])
        why = first["msg"].removeprefix("Value error, ")
        return error(400, f"{where or 'request body'}: {why}", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return error(
            e.status_code, str(e.detail), "not_found_error" if e.status_code == 404 else "invalid_request_error"
        )

    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next):
        path = request.url.path
        guarded = path.startswith("/v1/") or path in ("/tokenize", "/detokenize", "/tokenizer_info")
        if api_key and guarded and request.headers.get("authorization") != f"Bearer {api_key}":
            response = error(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error"
            )
        else:
            response = await call_next(request)
        metrics.requests.labels(route_of(request.scope), str(response.status_code)).inc()
        return response

    def route_of(scope) -> str:
        """The route a request names, as declared ("/v1/streams/{stream_id}/mix"), or "unmatched": one metrics
        label per route, however many paths clients send."""
        for route in app.router.routes:
            if route.matches(scope)[0] != Match.NONE:
                return route.path
        return "unmatched"

    # -- helpers --------------------------------------------------------------------------------
    streams: dict[str, list[Sequence]] = {}  # running requests by response id: their mixes can change live

    def require_model(model: str) -> None:
        if model not in base_mixes:
            message = f"the model {model!r} does not exist; available: {', '.join(base_mixes)}"
            raise APIError(404, message, "not_found_error", "model")

    def parse_mix(body: _Common) -> tuple[list[float] | Schedule, dict | None]:
        if body.model is not None:
            require_model(body.model)
        if body.target is not None:
            if body.mix is not None:
                raise APIError(400, "give either 'mix' or 'target', not both", param="target")
            try:
                sol = lm.solve_target(body.target, free_weights=body.free_weights)
                return sol.mix.coefficients(names), {
                    **sol.mix.to_json(names),
                    "predicted": sol.predicted,
                    "warnings": sol.warnings,
                }
            except LerpError as e:
                raise APIError(400, str(e), param="target") from None
        if body.mix is None:
            return base_mixes[body.model or model_id], None
        try:
            if isinstance(body.mix, Mapping) and "schedule" in body.mix:
                sched = Schedule.from_dict(body.mix)
                sched.coefficient_fn(names)
                return sched, None
            return to_mix(body.mix).coefficients(names), None
        except LerpError as e:
            raise APIError(400, str(e), param="mix") from None

    def new_tokens(body: _Common) -> int:
        max_tokens = body.max_completion_tokens or body.max_tokens
        return default_max_tokens if max_tokens is None else max_tokens

    def sampling(body: _Common, index: int) -> SamplingParams:
        max_tokens = new_tokens(body)
        if not 1 <= max_tokens <= max_tokens_limit:
            raise APIError(400, f"max_tokens must lie in [1, {max_tokens_limit}], got {max_tokens}", param="max_tokens")
        if body.seed is not None and not -(2**62) <= body.seed < 2**62:
            raise APIError(400, "seed must lie in [-2**62, 2**62)", param="seed")
        if not 0 <= body.min_tokens <= max_tokens:
            raise APIError(400, f"min_tokens must lie in [0, max_tokens], got {body.min_tokens}", param="min_tokens")
        seed = (body.seed if body.seed is not None else int.from_bytes(os.urandom(4), "little")) + index
        least = max_tokens if body.ignore_eos else body.min_tokens
        bias = {}
        for key, value in (body.logit_bias or {}).items():
            if not key.strip().isdigit() or int(key) >= engine.model.vocab:
                raise APIError(
                    400,
                    f"logit_bias keys must be token ids in [0, {engine.model.vocab}), got {key!r}",
                    param="logit_bias",
                )
            bias[int(key)] = value
        p = SamplingParams(
            max_tokens,
            body.temperature,
            body.top_p,
            body.top_k,
            seed,
            min_new_tokens=least,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=bias,
        )
        try:
            p.validate()
        except LerpError as e:  # temperature, top_p, top_k, the penalties or a bias (the rest is checked above)
            raise APIError(400, str(e), param=str(e).split()[0]) from None
        return p

    def limited(ids: list[int]) -> list[int]:
        if len(ids) > max_prompt_tokens:
            raise APIError(400, f"prompt is {len(ids)} tokens; the limit is {max_prompt_tokens}", param="prompt")
        return ids

    def stops(body: _Common) -> list[str]:
        out = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(out) > 4 or not all(out):
            raise APIError(400, "stop must be a string or a list of up to 4 non-empty strings", param="stop")
        return out

    def top_logprobs(body: _Common, kind: str) -> int | None:
        """How many alternatives each token reports (None: no logprobs)."""
        if kind == "chat":
            if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
                raise APIError(400, "top_logprobs must lie in [0, 20]", param="top_logprobs")
            if body.top_logprobs is not None and not body.logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
            return (body.top_logprobs or 0) if body.logprobs else None
        if body.logprobs is None or body.logprobs is False:
            return None
        if isinstance(body.logprobs, bool) or not 0 <= body.logprobs <= 5:
            raise APIError(400, "logprobs must be an integer in [0, 5]", param="logprobs")
        return body.logprobs

    def submit(
        prompt_ids: list[int], mix: list[float] | Schedule, params: SamplingParams, logprobs: int | None
    ) -> Sequence:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def on_event(seq: Sequence, token: int | None, finish: str | None) -> None:  # on the engine thread
            loop.call_soon_threadsafe(events.put_nowait, (token, finish))

        if isinstance(mix, Schedule):
            seq = lm.sequence(prompt_ids, mix, params, params.seed, on_event=on_event, logprobs=logprobs)
        else:
            seq = Sequence(prompt_ids, mix, params, seed=params.seed, on_event=on_event, logprobs=logprobs)
        seq.events = events
        try:
            engine.submit(seq)
        except QueueFull:
            raise APIError(
                503, "the server is at capacity; retry shortly", "server_busy", headers={"Retry-After": "1"}
            ) from None
        except LerpError as e:  # the prompt and max_tokens do not fit the engine
            raise APIError(400, str(e)) from None
        metrics.queue.set(engine.queue_depth)
        metrics.batch.set(engine.batch_size)
        return seq

    def mix_log(seq: Sequence) -> list[dict]:
        """The coefficients each stretch of the text was written under, from its first token's index."""
        return [{"token": i, "coefficients": c} for i, c in seq.mix_log]

    def token_text(token: int) -> str:
        return lm.tokenizer.decode([token])

    def logprob_entry(kind: str, token: int, lp: float, alts: list[tuple[int, float]]) -> dict:
        text = token_text(token)
        if kind == "chat":
            return {
                "token": text,
                "logprob": lp,
                "bytes": list(text.encode()),
                "top_logprobs": [
                    {"token": token_text(t), "logprob": v, "bytes": list(token_text(t).encode())} for t, v in alts
                ],
            }
        return {"token": text, "logprob": lp, "top": {token_text(t): v for t, v in alts}}

    def logprobs_field(kind: str, entries: list[dict], offset: int = 0) -> dict | None:
        if kind == "chat":
            return {"content": entries}
        offsets, pos = [], offset
        for e in entries:
            offsets.append(pos)
            pos += len(e["token"])
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [e["top"] for e in entries],
            "text_offset": offsets,
        }

    def choices_per_prompt(body: _Common) -> int:
        if not 1 <= body.n <= 8:
            raise APIError(400, f"n must lie in [1, 8], got {body.n}", param="n")
        return body.n

    async def run(kind: str, prompt_ids: list[list[int]], body: _Common, route: str, mix: tuple | None = None):
        """Generate ``body``'s answers to ``prompt_ids`` (``mix``: parse_mix's result, when the caller has it)."""
        choices_per_prompt(body)
        coeffs, solved = mix or parse_mix(body)
        params = [sampling(body, j) for j in range(body.n)]
        stop, n_alts = stops(body), top_logprobs(body, kind)
        reqs = [submit(ids, coeffs, p, n_alts) for ids in prompt_ids for p in params]
        created, rid = int(time.time()), f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        streams[rid] = reqs
        usage_prompt = sum(len(i) for i in prompt_ids) * body.n
        extra = {"mix": solved} if solved else {}
        start = time.monotonic()

        def envelope(whole: bool) -> dict:
            """What every answer and every streamed chunk of this request starts with."""
            obj = "text_completion" if kind != "chat" else "chat.completion" if whole else "chat.completion.chunk"
            return {"id": rid, "object": obj, "created": created, "model": body.model or model_id}

        def usage() -> dict:
            done = sum(getattr(r, "used", len(r.tokens)) for r in reqs)  # tokens sent (a stop string cuts the rest)
            return {"prompt_tokens": usage_prompt, "completion_tokens": done, "total_tokens": usage_prompt + done}

        hold = max((len(x) for x in stop), default=1) - 1  # characters held back: they may start a stop string

        async def tokens(req: Sequence):
            """(delta text, finish_reason, logprob entries) as tokens arrive. Decodes a short window of recent
            tokens (the incremental detokenizer of vLLM and TGI), so multi-byte characters come out whole in
            O(1) a token; cuts the text before the first stop string, holding back what could begin one."""
            ids, prefix, read, text, sent, pending = [], 0, 0, "", 0, []
            while True:
                token, finish = await req.events.get()
                if token is None:
                    if finish and finish.startswith("error"):
                        raise APIError(
                            500, f"generation failed ({finish[7:]}); other requests are unaffected", "server_error"
                        )
                    req.used = len(req.tokens)
                    yield text[sent:], finish, pending
                    return
                ids.append(token)
                metrics.tokens.inc()
                if req.logprobs is not None:
                    pending.append(logprob_entry(kind, token, *req.token_logprobs[len(ids) - 1]))
                before = lm.tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
                now = lm.tokenizer.decode(ids[prefix:], skip_special_tokens=True)
                if len(now) <= len(before) or now.endswith("\ufffd"):
                    continue
                text += now[len(before) :]
                prefix, read = read, len(ids)
                hit = min((i for i in (text.find(x, max(0, sent - hold)) for x in stop) if i >= 0), default=-1)
                if hit >= 0:
                    req.cancelled, req.used = True, len(ids)  # frees the row at the next step
                    yield text[sent:hit], "stop", pending
                    return
                safe = len(text) - hold
                if safe > sent:
                    yield text[sent:safe], None, pending
                    sent, pending = safe, []

        def choice(
            i: int,
            delta: str,
            finish: str | None,
            entries: list[dict] | None,
            offset: int = 0,
            first: bool = False,
            whole: bool = False,
        ) -> dict:
            lp = logprobs_field(kind, entries, offset) if n_alts is not None and entries is not None else None
            if kind == "chat":
                if whole:
                    return {
                        "index": i,
                        "message": {"role": "assistant", "content": delta},
                        "finish_reason": finish,
                        "logprobs": lp,
                    }
                d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
                return {"index": i, "delta": d, "finish_reason": finish, "logprobs": lp}
            return {"index": i, "text": delta, "finish_reason": finish, "logprobs": lp}

        def chunk(i: int, delta: str, finish: str | None, entries=None, offset: int = 0, first: bool = False) -> dict:
            out = envelope(whole=False) | {"choices": [choice(i, delta, finish, entries, offset, first)]} | extra
            if finish:
                out["mix_log"] = mix_log(reqs[i])
            return out

        if body.stream:

            async def events():
                queue: asyncio.Queue = asyncio.Queue()

                async def pump(i, req):
                    offset = 0
                    try:
                        async for delta, finish, entries in tokens(req):
                            if delta or finish or entries:
                                await queue.put(chunk(i, delta, finish, entries, offset))
                            offset += len(delta)
                    except APIError as e:  # the status line is already sent: report in-band, as OpenAI does
                        await queue.put({"error": {"message": e.message, "type": e.type, "param": None, "code": None}})
                    finally:
                        await queue.put(None)

                tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(reqs)]
                try:
                    if kind == "chat":
                        for i in range(len(reqs)):
                            yield f"data: {json.dumps(chunk(i, '', None, first=True))}\n\n"
                    remaining = len(reqs)
                    while remaining:
                        item = await queue.get()
                        if item is None:
                            remaining -= 1
                            continue
                        yield f"data: {json.dumps(item)}\n\n"
                    if body.stream_options and body.stream_options.include_usage:
                        last = envelope(whole=False) | {"choices": [], "usage": usage()}
                        yield f"data: {json.dumps(last)}\n\n"
                    yield "data: [DONE]\n\n"
                    metrics.latency.labels(route).observe(time.monotonic() - start)
                finally:  # the client went away (or we are done): free the rows
                    streams.pop(rid, None)
                    for r in reqs:
                        r.cancelled = True
                    for t in tasks:
                        t.cancel()

            return StreamingResponse(events(), media_type="text/event-stream")

        choices = []
        try:
            for i, r in enumerate(reqs):
                parts, finish, entries = [], None, []
                async for delta, fin, new in tokens(r):
                    parts.append(delta)
                    entries += new
                    finish = fin or finish
                choices.append(choice(i, "".join(parts), finish, entries, whole=True))
        finally:
            streams.pop(rid, None)
            for r in reqs:
                r.cancelled = True
        metrics.latency.labels(route).observe(time.monotonic() - start)
        return envelope(whole=True) | {"choices": choices, "usage": usage()} | extra

    def chat_ids(messages: list[ChatMessage]) -> list[int]:
        """The prompt's token ids: the messages through the chat template, ready for the assistant's turn."""
        msgs = [{"role": m.role, "content": m.text()} for m in messages]
        if lm.tokenizer.chat_template:
            text = lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:"
        return lm.tokenizer(text, add_special_tokens=not lm.tokenizer.chat_template)["input_ids"]

    scoring = threading.Lock()  # the exact model's coefficients are one state: one scoring pass at a time

    def prompt_entries(ids: list[int], coeffs: list[float], alts: int) -> list[dict]:
        """Each prompt token's logprob entry under ``coeffs`` (the exact model; the first token has none)."""
        with scoring:
            logits = lm.logits(torch.tensor([ids]), torch.tensor([coeffs]))[0, :-1]
        lp = torch.log_softmax(logits.float(), -1)
        top = torch.topk(lp, alts) if alts else None
        out = [{"token": token_text(ids[0]), "logprob": None, "top": None}]
        for i, token in enumerate(ids[1:]):
            pairs = list(zip(top.indices[i].tolist(), top.values[i].tolist())) if top is not None else []
            out.append(logprob_entry("completion", token, float(lp[i, token]), pairs))
        return out

    async def echoed(prompt_ids: list[list[int]], texts: list[str], body: CompletionBody) -> dict:
        """OpenAI's ``echo``: each choice's text starts with its prompt, and with ``logprobs`` each prompt token's
        logprob under the request's mix comes first (how evaluation harnesses score a text); ``max_tokens: 0``
        scores the prompt alone."""
        n, mix = choices_per_prompt(body), parse_mix(body)
        coeffs, solved = mix
        alts = top_logprobs(body, "completion")
        if new_tokens(body) == 0:
            answer = {
                "id": f"cmpl-{uuid.uuid4().hex[:24]}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.model or model_id,
                "choices": [
                    {"index": i, "text": "", "finish_reason": "length", "logprobs": None}
                    for i in range(len(prompt_ids) * n)
                ],
            } | ({"mix": solved} if solved else {})
            used = sum(map(len, prompt_ids)) * n
            answer["usage"] = {"prompt_tokens": used, "completion_tokens": 0, "total_tokens": used}
        else:
            answer = await run("completion", prompt_ids, body, "/v1/completions", mix)
        if isinstance(coeffs, Schedule):  # the prompt is read under the first token's mix
            coeffs = lm.sequence(prompt_ids[0], coeffs, SamplingParams(), 0).coeffs
        for p, (ids, text) in enumerate(zip(prompt_ids, texts)):
            entries = await asyncio.to_thread(prompt_entries, ids, coeffs, alts) if alts is not None else None
            for choice in answer["choices"][p * n : (p + 1) * n]:
                choice["text"] = text + choice["text"]
                if entries is not None:
                    new = choice["logprobs"] or {"tokens": [], "token_logprobs": [], "top_logprobs": []}
                    choice["logprobs"] = logprobs_field("completion", entries, 0)
                    choice["logprobs"]["text_offset"] += [len(text) + o for o in new.get("text_offset", [])]
                    for key in ("tokens", "token_logprobs", "top_logprobs"):
                        choice["logprobs"][key] += new[key]
        return answer

    # -- routes ---------------------------------------------------------------------------------
    errors = {
        code: {"description": what, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for code, what in (
            (400, "Bad request: the message names the field"),
            (401, "Missing or wrong API key"),
            (404, "Unknown model id (the message lists the ids)"),
            (500, "Generation failed"),
            (503, "At capacity: retry after the Retry-After header's seconds"),
        )
    }
    generation = {
        200: {
            "description": "A completion, or with stream=true server-sent events",
            "content": {"application/json": {}, "text/event-stream": {}},
        }
    } | errors

    @app.post("/v1/completions", responses=generation)
    async def completions(body: CompletionBody):
        single = isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], int))
        prompts = [body.prompt] if single else body.prompt
        if not prompts or len(prompts) > 8:
            raise APIError(400, "prompt must be text or token ids, or a list of 1 to 8 of either", param="prompt")
        if not all(prompts):
            raise APIError(400, "prompt must not be empty", param="prompt")
        if body.echo and body.stream:
            raise APIError(400, "echo cannot stream: send stream: false", param="echo")
        if isinstance(prompts[0], str):
            ids = lm.prompt_ids(prompts, chat=body.chat)  # as `generate` reads them
        elif body.chat:
            raise APIError(400, "chat reads text prompts; token ids are taken as they are", param="chat")
        else:
            vocab = len(lm.tokenizer)
            if not all(0 <= t < vocab for p in prompts for t in p):
                raise APIError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
            ids = prompts
        ids = [limited(x) for x in ids]
        if not body.echo:
            return await run("completion", ids, body, "/v1/completions")
        texts = [p if isinstance(p, str) else lm.tokenizer.decode(p) for p in prompts]
        return await echoed(ids, texts, body)

    @app.post("/v1/chat/completions", responses=generation)
    async def chat(body: ChatBody):
        return await run("chat", [limited(chat_ids(body.messages))], body, "/v1/chat/completions")

    @app.post("/v1/streams/{stream_id}/mix", responses=errors)
    async def live_mix(stream_id: str, body: LiveMix):
        """Change a running request's mix, for that choice alone: from its next token (the cost of a decode
        step), or with ``reencode`` by re-reading the text so far under the new mix first (one prefill),
        which steers far more (docs/results/schedule)."""
        reqs = streams.get(stream_id)
        if reqs is None:
            raise APIError(404, f"no running request {stream_id!r} (finished, or never started)", "not_found_error")
        if not 0 <= body.index < len(reqs):
            raise APIError(400, f"index must lie in [0, {len(reqs) - 1}]", param="index")
        try:
            coeffs = to_mix(body.mix).coefficients(names)
        except LerpError as e:
            raise APIError(400, str(e), param="mix") from None
        seq = reqs[body.index]
        seq.restart_on_change, seq.schedule, seq.coeffs = body.reencode, None, coeffs  # read at the engine's next step
        return {"id": stream_id, "index": body.index, "from_token": len(seq.tokens)}

    def model_card(m: str) -> dict:
        return {"id": m, "object": "model", "created": 0, "owned_by": "lerplm"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(m) for m in base_mixes]}

    @app.get("/v1/models/{model}", responses=errors)
    async def model(model: str):
        require_model(model)
        return model_card(model)

    @app.get("/v1/attributes")
    async def attributes():
        return {
            "attributes": [
                {
                    "name": a.name,
                    "negative": a.negative.name,
                    "positive": a.positive.name,
                    "default_level": 0.5,
                    "default_weight": 1.0,
                }
                for a in lm.anchors.attributes
            ],
            "limits": {"max_tokens": max_tokens_limit, "max_prompt_tokens": max_prompt_tokens},
        }

    # vLLM's tokenizer routes, which evaluation harnesses (lm-eval) use instead of a local copy of the tokenizer
    @app.get("/tokenizer_info", responses=errors)
    async def tokenizer_info():
        tok = lm.tokenizer
        return {
            "tokenizer_class": type(tok).__name__,
            "eos_token": tok.eos_token,
            "bos_token": tok.bos_token,
            "pad_token": tok.pad_token,
            "chat_template": tok.chat_template,
            "model_max_length": engine.max_len,
        }

    @app.post("/tokenize", responses=errors)
    async def tokenize(body: TokenizeBody):
        if body.model is not None:
            require_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give either 'prompt' or 'messages'", param="prompt")
        if body.messages is not None:
            ids = chat_ids(body.messages)
        else:
            ids = lm.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_len}

    @app.post("/detokenize", responses=errors)
    async def detokenize(body: DetokenizeBody):
        if body.model is not None:
            require_model(body.model)
        vocab = len(lm.tokenizer)
        if not all(0 <= t < vocab for t in body.tokens):
            raise APIError(400, f"tokens must be token ids in [0, {vocab})", param="tokens")
        return {"prompt": lm.tokenizer.decode(body.tokens)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "batch_size": engine.batch_size, "queue_depth": engine.queue_depth}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(engine.queue_depth)
        metrics.batch.set(engine.batch_size)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (STATIC / "index.html").read_text()

    return app
