"""The server process: the model's engine loop on the main thread (where torch's CPU kernels run fastest),
uvicorn's HTTP loop on a second thread, and a clean stop on Ctrl-C or when HTTP ends."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import LerpError
from ..mix import Mix


def parse_presets(specs: Sequence[str]) -> dict[str, Mix]:
    """``NAME=LEVELS`` specs (e.g. "formal-cheerful=formality=1,sentiment=0.9") as model id -> mix."""
    presets = {}
    for p in specs:
        name, sep, spec = p.partition("=")
        if not sep or not name.strip() or not spec:
            raise LerpError(f"bad --preset {p!r}: write NAME=LEVELS, e.g. formal=formality=1")
        presets[name.strip()] = Mix.from_spec(spec)
    return presets


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: an address that is taken or invalid fails at once,
    in one line, instead of in the HTTP thread after the load."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except (OSError, OverflowError) as e:
        raise LerpError(f"cannot listen on {host}:{port}: {e}") from None
    return sock


def serve(
    anchors: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    max_tokens: int = 512,
    max_prompt_tokens: int = 1024,
    quantize: str = "fp32",
    default_mix: str = "base",
    presets: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> None:
    """Serve an anchor set until interrupted. The default mix ("base" or levels) and the presets are checked
    against the anchors before the model loads."""
    import uvicorn

    from ..anchors import AnchorSet
    from ..generate import LerpModel
    from .app import create_app

    names = AnchorSet.load(anchors).names
    sock = listen(host, port)
    base = None if default_mix.strip().lower() == "base" else Mix.from_spec(default_mix)
    named = parse_presets(presets)
    for m in [base, *named.values()]:
        if m is not None:
            m.coefficients(names)
    app = create_app(
        LerpModel.load(anchors, quantize=quantize),
        api_key,
        max_batch,
        max_queue,
        max_tokens,
        max_prompt_tokens,
        engine_thread=False,
        default_mix=base,
        presets=named,
    )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lerplm-http", daemon=True)
    http.start()
    log(f"serving {anchors} on http://{host}:{port}/ (API at /v1, page at /){' with an API key' if api_key else ''}")
    engine = app.state.engine
    threading.Thread(target=lambda: (http.join(), engine.stop()), daemon=True).start()  # HTTP failed or ended
    try:
        engine.loop()
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        http.join(timeout=10)
