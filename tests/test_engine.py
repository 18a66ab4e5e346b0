"""The engine against the exact references: the fast step equals the mixed runtime (itself equal to
merged models) for per-row and per-token mixes, chunked prefill changes nothing, rows that share
batches and join or leave mid-run produce what they produce alone, quantised steps (ONNX Runtime) stay
within their stated tolerance and keep those properties, and the batched sampler draws from the right distribution."""

from __future__ import annotations

import os

import pytest
import torch

from lerplm import LerpError
from lerplm.engine import Engine, FastDecoder, SamplingParams, Sequence, StepPlan
from lerplm.engine.recompute import RecomputeStep
from lerplm.engine.sampling import BatchParams, sample, uniforms

COEFFS = torch.tensor([[0.2, 0.8, 0.0, 0.0], [0.5, 0.0, 0.1, 0.4], [0.0, 0.0, 0.0, 0.0]])


def prefill_plan(ids: torch.Tensor, coeffs: torch.Tensor | None, slots: list[int]) -> StepPlan:
    """Every row of ``ids`` (B, T) as one prefill chunk; logits for every token."""
    b, t = ids.shape
    return StepPlan.prefilling(
        ids.reshape(-1),
        [(s, 0, t) for s in slots],
        None if coeffs is None else coeffs.reshape(b * t, -1),
        logit_index=torch.arange(b * t),
    )


@pytest.fixture(scope="module")
def fast(lm):
    return FastDecoder(lm.model, lm.adapters)


def test_per_row_and_per_token_mixes_equal_the_mixed_runtime(lm, fast):
    ids = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    want = lm.logits(ids, COEFFS)
    got = fast(prefill_plan(ids, COEFFS[:, None].expand(3, 12, 4), [0, 2, 3]), fast.new_cache(4, 32)).view(3, 12, -1)
    assert (got - want).abs().max() < 1e-4
    # a mix that changes at every token: each token's coefficients, keys and values under its own mix
    per_token = torch.rand(3, 12, 4, generator=torch.Generator().manual_seed(1))
    want = lm.logits(ids, per_token)
    got = fast(prefill_plan(ids, per_token, [1, 0, 3]), fast.new_cache(4, 32)).view(3, 12, -1)
    assert (got - want).abs().max() < 1e-4
    assert (lm.logits(ids, per_token * 0.5) - want).abs().max() > 1e-2  # the mix matters


def test_decode_rows_in_scattered_slots_with_a_prefill_chunk_in_the_same_step(lm, fast):
    ids = torch.randint(3, 300, (3, 13), generator=torch.Generator().manual_seed(2))
    want = lm.logits(ids, COEFFS)[:, -1]
    cache = fast.new_cache(4, 32)
    fast(prefill_plan(ids[:, :12], COEFFS[:, None].expand(3, 12, 4), [0, 2, 3]), cache)
    # rows in slots 0 and 3 decode token 12; the row in slot 2 re-prefills positions 5..12 as a chunk
    plan = StepPlan(
        tokens=torch.cat([ids[[0, 2], 12], ids[1, 5:13]]),
        positions=torch.tensor([12, 12, *range(5, 13)]),
        slots=torch.tensor([0, 3] + [2] * 8),
        coeffs=torch.cat([COEFFS[[0, 2]], COEFFS[1:2].expand(8, 4)]),
        active=(0, 4),
        decode_slots=[0, 3],
        decode_len=13,
        prefill=[(2, 5, 8)],
        logit_index=torch.tensor([0, 1, 9]),
    )
    assert (fast(plan, cache) - want[[0, 2, 1]]).abs().max() < 1e-4


def test_the_recompute_step_equals_the_fast_step(lm, fast):
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(3))
    per_token = torch.rand(2, 9, 4, generator=torch.Generator().manual_seed(4))
    slow = RecomputeStep(lm.model, lm.runtime)
    plan = prefill_plan(ids, per_token, [0, 1])
    plan.logit_index = torch.tensor([8, 17])
    got = slow(plan, slow.new_cache(2, 16))
    assert (got - fast(plan, fast.new_cache(2, 16))).abs().max() < 1e-4


def _seqs(lm, lengths, seed=0, temperature=0.9):
    prompts = [
        "the food was great",
        "could you please take a look at this when you have time?",
        "worst",
        "it is a minor",
    ]
    ids = lm.prompt_ids(prompts)
    mixes = [[0.2, 0.8, 0, 0], [0, 0, 1, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0]]
    return [
        Sequence(ids[i % 4], mixes[i % 4], SamplingParams(n, temperature, 0.95, 0, 0), seed=seed + i)
        for i, n in enumerate(lengths)
    ]


def _engine(lm, **kw) -> Engine:
    eng = lm.engine(max_len=128, **kw)
    eng.eos = set()  # rows end by length only, so every row runs its full course
    return eng


def test_rows_that_share_batches_and_join_or_leave_mid_run_produce_what_they_produce_alone(lm):
    lengths = [9, 3, 14, 6, 11]
    alone = [_engine(lm, max_batch=1).run([s])[0].tokens for s in _seqs(lm, lengths)]
    eng = _engine(lm, max_batch=3, prefill_chunk=7)
    together = eng.run(_seqs(lm, lengths))
    assert [s.tokens for s in together] == alone
    sizes, events = list(eng.stats.batch_sizes), list(eng.stats.events)
    assert max(sizes) == 3  # rows really shared steps
    joins = [step for step, kind, _ in events if kind == "join"]
    leaves = [step for step, kind, _ in events if kind == "leave"]
    assert len(joins) == len(leaves) == 5
    assert any(0 < j < max(leaves) for j in joins)  # a row joined while others ran
    assert min(leaves) < max(joins)  # and a row left before the last joined


def _check_shared_prompts(lm, engine, turns_exact: bool = True) -> None:
    """Rows whose prompts start alike under the same mix copy that start from the row that computed it; rows
    under another mix compute their own; every row's tokens are those it produces alone. ``turns_exact``: a next
    turn that copies a finished row's answer also gets what it gets computing it afresh (not on the quantised steps,
    whose decode and prefill products round differently)."""
    prompts = ["the food was great and the staff", "the food was great and the wine", "the food was cold", "x"]
    ids = lm.prompt_ids(prompts)  # the chat template's system turn starts every prompt alike
    mixes = [[0.2, 0.8, 0, 0]] * 3 + [[0, 0, 1, 0]]

    def seqs():
        return [Sequence(ids[i], mixes[i], SamplingParams(6, 0.9, 0.95, 0, 0), seed=i) for i in range(4)]

    alone = [engine(max_batch=1).run([s])[0].tokens for s in seqs()]
    eng = engine(max_batch=4, prefill_chunk=512)
    assert [s.tokens for s in eng.run(seqs())] == alone
    common = [len(os.path.commonprefix([ids[0], ids[i][:-1]])) for i in (1, 2)]
    assert min(common) >= 8 and eng.stats.shared_positions == sum(common)  # the other mix shares nothing
    # the followers wait one step for the first row's prompt: rows 0 and 3 sample first, rows 1 and 2 join next
    assert list(eng.stats.batch_sizes)[:2] == [2, 4]
    # a finished row's slot still holds its prompt and answer: the next turn of its conversation copies them
    first = eng.run([Sequence(ids[3], mixes[0], SamplingParams(5, 0.9, 0.95, 0, 0), seed=7)])[0]
    turn = Sequence(first.context + ids[2][-4:], mixes[0], SamplingParams(6, 0.9, 0.95, 0, 0), seed=8)
    before = eng.stats.shared_positions
    eng.run([turn])
    assert eng.stats.shared_positions - before == len(first.context) - 1  # all but its last token's keys
    fresh = Sequence(turn.prompt_ids, mixes[0], SamplingParams(6, 0.9, 0.95, 0, 0), seed=8)
    if turns_exact:
        assert turn.tokens == engine(max_batch=1).run([fresh])[0].tokens


def test_rows_of_one_mix_copy_their_shared_prompt_start(lm):
    _check_shared_prompts(lm, lambda **kw: _engine(lm, **kw))

    def recompute(**kw):
        eng = _engine(lm, **kw)
        eng.model = RecomputeStep(lm.model, lm.runtime)
        eng.cache = eng.model.new_cache(eng.max_batch, eng.max_len)
        return eng

    _check_shared_prompts(lm, recompute)


def test_chunked_prefill_changes_nothing(lm):
    a = _engine(lm, max_batch=4, prefill_chunk=3).run(_seqs(lm, [8, 8, 8, 8], temperature=0))
    b = _engine(lm, max_batch=4, prefill_chunk=512).run(_seqs(lm, [8, 8, 8, 8], temperature=0))
    assert [s.tokens for s in a] == [s.tokens for s in b]


def test_mix_changes_between_steps_act_on_the_next_token(lm):
    """A mix that switches at new token 4: the token fed to produce token i carries coeffs_at(i), so the
    run equals the mixed runtime with those per-token coefficients over the whole sequence (greedy)."""
    ids = lm.prompt_ids(["the food was great"])[0]
    first, second = [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
    seq = Sequence(ids, first, SamplingParams(10, 0), 0, schedule=lambda i: first if i < 4 else second)
    _engine(lm, max_batch=1).run([seq])
    full = torch.tensor([ids + seq.tokens[:-1]])
    per_token = torch.tensor([first if p < len(ids) - 1 + 4 else second for p in range(full.shape[1])])[None]
    want = lm.logits(full, per_token)[0, len(ids) - 1 :].argmax(-1).tolist()
    assert seq.tokens == want
    assert want != lm.logits(full, torch.tensor([first]))[0, len(ids) - 1 :].argmax(-1).tolist()  # the switch mattered
    assert seq.mix_log == [(0, first), (4, second)]


def test_engine_refuses_what_cannot_fit(lm):
    eng = lm.engine(max_batch=1, max_len=16)
    with pytest.raises(LerpError, match="positions"):
        eng.submit(Sequence([1] * 10, [0.0] * 4, SamplingParams(10), 0))
    with pytest.raises(LerpError, match="empty"):
        eng.submit(Sequence([], [0.0] * 4, SamplingParams(1), 0))


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, lm):
    """The tiny model's step on ONNX Runtime with a quantised base, and a model object that generates with it."""
    from lerplm.generate import LerpModel

    qlm = LerpModel(lm.anchors, lm.model, lm.tokenizer, lm.runtime, lm.adapters, request.param)
    return qlm.step_model, qlm


QUANTIZED_TOL = {"int8": 0.05, "int4": 0.15}  # max |Δlogit| over the largest logit, on a random model


def test_quantised_steps_stay_within_their_tolerance(lm, quantized):
    """Stated tolerance on a random model (real models are measured in benchmarks/engine.py: greedy
    agreement and perplexity), per-row and per-token mixes, for prefill chunks and decode steps."""
    step, _ = quantized
    ids = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(5))
    per_token = torch.rand(3, 12, 4, generator=torch.Generator().manual_seed(6))
    want = lm.logits(ids, per_token)
    cache = step.new_cache(4, 32)
    got = torch.stack(
        [
            step(prefill_plan(ids[i : i + 1, :11], per_token[i : i + 1, :11], [s]), cache)
            for i, s in enumerate([0, 2, 3])
        ]
    )
    tol = QUANTIZED_TOL[step.scheme] * want.abs().max()
    assert 1e-4 < (got[:, -1] - want[:, 10]).abs().max() <= tol
    decode = StepPlan.decoding(ids[:, 11], torch.full((3,), 11), [0, 2, 3], per_token[:, 11])  # slot 1: a dummy row
    assert (step(decode, cache) - want[:, 11]).abs().max() <= tol
    assert (lm.logits(ids, per_token * 0.5) - want).abs().max() > 2 * tol  # the tolerance is finer than a mix change


def test_prefill_smoothing_moves_ranges_into_the_weights_exactly(lm, quantized):
    """The prefill graph divides each smoothed product's input by s (in the norm before it) and multiplies its
    weights by s: with s = 2 everywhere (a power of two, which per-token and per-output rounding
    carry exactly) its logits are those of the graph without smoothing; the calibrated factors are positive and
    finite, one per input channel."""
    from lerplm.engine.ortstep import BITS, Calibration, OrtDecoder, build_graph, calibrate, new_session

    step, qlm = quantized
    dec = FastDecoder(lm.model, lm.adapters)
    factors = calibrate(dec, qlm.prompt_ids(["the food was great", "could you please take a look?"])).smooth
    assert set(factors) == {(i, g) for i in range(dec.num_layers) for g in ("qkv", "o", "gate_up", "down")}
    assert all(f.shape == (getattr(dec.layers[i], g).base.weight.shape[1],) for (i, g), f in factors.items())
    assert all(bool((f > 0).all() and f.isfinite().all()) for f in factors.values())
    ids = torch.randint(3, 300, (1, 11), generator=torch.Generator().manual_seed(9))
    c = COEFFS[:1, None].expand(1, 11, 4)
    plain, doubled = OrtDecoder(dec, step.scheme), OrtDecoder(dec, step.scheme)
    twos = {key: torch.full_like(f, 2.0) for key, f in factors.items()}
    doubled.prefill_session = new_session(build_graph(dec, BITS[step.scheme], Calibration(twos)), 1)
    want = plain(prefill_plan(ids, c, [0]), plain.new_cache(1, 16))
    assert torch.allclose(doubled(prefill_plan(ids, c, [0]), doubled.new_cache(1, 16)), want, atol=1e-4)
    doubled.prefill_session = None  # prefill chunks run the prefill graph, decode rows the decode graph
    with pytest.raises(AttributeError):
        doubled(prefill_plan(ids, c, [0]), doubled.new_cache(1, 16))
    doubled(StepPlan.decoding(ids[0, :2], torch.tensor([0, 0]), [0, 1], COEFFS[:2]), doubled.new_cache(2, 16))


def test_integer_products_compute_outlier_channels_apart():
    """An input channel 300x the others sets each token's int8 step and rounds the rest away; computed apart in
    fp32 (its weights' column too), the product is as close to exact as without the outlier, and several times
    closer than with it rounded in."""
    from onnx import TensorProto, helper

    from lerplm.engine.ortstep import Graph, new_session

    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(8, 64, generator=g), torch.randn(32, 64, generator=g)

    def error(x: torch.Tensor, outliers: torch.Tensor | None) -> float:
        graph = Graph()
        graph.integer_matmul("x", w, outliers)
        graph.nodes[-1].output[0] = "y"
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])]
        model = graph.serialize("t", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])])
        got = new_session(model, 1).run(["y"], {"x": x.numpy()})[0]
        return float((torch.from_numpy(got) - x @ w.T).abs().max())

    wide = x.clone()
    wide[:, 5] *= 300
    usual, apart = error(x, None), error(wide, torch.tensor([5, 40]))
    assert apart < 1.5 * usual and error(wide, None) > 20 * apart


def test_calibration_finds_the_widest_inputs_of_o_and_down(lm, quantized):
    """With one channel of every down product's input 300x its usual size (up's row scaled up, down's column
    down: the same model), calibration lists it among the eighth of down's inputs that the prefill graph computes
    in fp32, and the prefill stays within the tolerance."""
    import copy

    from lerplm.engine.ortstep import OrtDecoder, calibrate

    step, qlm = quantized
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[5] *= 300
            layer.mlp.down_proj.weight[:, 5] /= 300
    dec = FastDecoder(model, lm.adapters)
    prompts = qlm.prompt_ids(["the food was great", "could you please take a look?"])
    found = calibrate(dec, prompts).outliers
    assert set(found) == {(i, g) for i in range(dec.num_layers) for g in ("o", "down")}
    assert all(5 in found[i, "down"] and len(found[i, "down"]) == 128 // 8 for i in range(dec.num_layers))
    ids = torch.randint(3, 300, (1, 11), generator=torch.Generator().manual_seed(4))
    c = COEFFS[1:2, None].expand(1, 11, 4)
    want = dec(prefill_plan(ids, c, [0]), dec.new_cache(1, 16))
    apart = OrtDecoder(dec, step.scheme, prompts)
    error = (apart(prefill_plan(ids, c, [0]), apart.new_cache(1, 16)) - want).abs().max()
    assert error <= QUANTIZED_TOL[step.scheme] * want.abs().max()


def test_quantised_chunks_and_scattered_rows_equal_whole_runs(lm, quantized):
    """On ONNX Runtime too, a prompt prefilled in chunks leaves the cache and logits of one chunk, and decode
    rows in scattered slots (dummy rows between them) get what each row gets decoding alone."""
    step, _ = quantized
    ids = torch.randint(3, 300, (2, 13), generator=torch.Generator().manual_seed(7))
    c = COEFFS[:2, None].expand(2, 13, 4)
    whole, chunked = step.new_cache(1, 32), step.new_cache(1, 32)
    want = step(prefill_plan(ids[:1, :12], c[:1, :12], [0]), whole)[-1]
    first = prefill_plan(ids[:1, :5], c[:1, :5], [0])
    step(first, chunked)
    second = StepPlan.prefilling(ids[0, 5:12], [(0, 5, 7)], c[0, 5:12])
    assert torch.allclose(step(second, chunked)[0], want, atol=1e-5)
    assert all(torch.allclose(a[:, :, :, :12], b[:, :, :, :12], atol=1e-5) for a, b in zip(whole, chunked))

    def decode(slots: list[int], rows: list[int], cache, order: list[int] | None = None) -> torch.Tensor:
        order_t = torch.tensor(order) if order else None
        plan = StepPlan.decoding(ids[rows, 12], torch.full((len(rows),), 12), slots, COEFFS[rows], order_t)
        return step(plan, cache)

    alone = []
    for row in (0, 1):
        cache = step.new_cache(1, 32)
        step(prefill_plan(ids[row : row + 1, :12], c[row : row + 1, :12], [0]), cache)
        alone.append(decode([0], [row], cache)[0])
    cache = step.new_cache(4, 32)
    for row, slot in ((0, 3), (1, 0)):
        step(prefill_plan(ids[row : row + 1, :12], c[row : row + 1, :12], [slot]), cache)
    together = decode([3, 0], [0, 1], cache)  # slot order differs from slot numbers; slots 1 and 2 are dummies
    assert torch.allclose(together, torch.stack(alone), atol=1e-4)
    # logits asked for in another order than the rows' (rewriting position 12 with the same tokens)
    assert torch.allclose(decode([3, 0], [0, 1], cache, order=[1, 0]), together.flip(0), atol=1e-5)
    assert torch.allclose(decode([3, 0], [0, 1], cache, order=[1, 1, 0]), together[[1, 1, 0]], atol=1e-5)


def test_quantised_prompts_that_start_together_run_in_one_call_as_each_alone(lm, quantized, monkeypatch):
    """Prompts that start in the same step run as one call of the prefill graph, packed (their attention apart,
    every other product on their tokens alone), and each gets the logits and cache it gets on its own."""
    step, _ = quantized
    gen = torch.Generator().manual_seed(3)
    lengths, slots = [5, 11, 8], [2, 0, 3]
    prompts = [torch.randint(3, 300, (n,), generator=gen) for n in lengths]
    mixes = [COEFFS[i].expand(n, 4) for i, n in enumerate(lengths)]
    alone = []
    for ids, c in zip(prompts, mixes):
        cache = step.new_cache(1, 32)
        logits = step(StepPlan.prefilling(ids, [(0, 0, len(ids))], c, torch.arange(len(ids))), cache)
        alone.append((logits, [kv[:, 0, :, : len(ids)].clone() for kv in cache]))
    calls = []
    run = step._run
    monkeypatch.setattr(step, "_run", lambda *a: calls.append(a[0]) or run(*a))
    cache = step.new_cache(4, 32)
    plan = StepPlan.prefilling(
        torch.cat(prompts), [(s, 0, n) for s, n in zip(slots, lengths)], torch.cat(mixes), torch.arange(sum(lengths))
    )
    together = step(plan, cache).split(lengths)
    assert calls == [step.prefill_session]
    for (logits, kv_alone), got, slot, n in zip(alone, together, slots, lengths):
        assert torch.equal(got, logits)
        assert all(torch.equal(kv[:, slot, :, :n], want) for kv, want in zip(cache, kv_alone))


def test_quantised_prompts_that_start_together_around_a_continuing_chunk_get_their_own_tokens(lm, quantized):
    """A chunk that continues a prompt may sit between two prompts that start in the same step (a row that
    restarts under a new mix starts again at 0): the starting prompts run together on their own tokens, the
    continuing chunk on its own, and each gets what it gets alone."""
    step, _ = quantized
    gen = torch.Generator().manual_seed(4)
    first, rest, other = (torch.randint(3, 300, (n,), generator=gen) for n in (5, 10, 8))
    mix = COEFFS[0].expand(10, 4)

    def prefill(chunks, tokens, cache):
        return step(StepPlan.prefilling(torch.cat(tokens), chunks, torch.cat([mix[:n] for *_, n in chunks])), cache)

    want = []
    for chunks, tokens in (([(0, 0, 5)], [first]), ([(0, 4, 6)], [rest[4:]]), ([(0, 0, 8)], [other])):
        cache = step.new_cache(1, 32)
        if chunks[0][1]:
            prefill([(0, 0, 4)], [rest[:4]], cache)
        want.append(prefill(chunks, tokens, cache)[0])
    cache = step.new_cache(4, 32)
    prefill([(1, 0, 4)], [rest[:4]], cache)
    got = prefill([(2, 0, 5), (1, 4, 6), (3, 0, 8)], [first, rest[4:], other], cache)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_quantised_dummy_rows_leave_what_free_slots_hold(lm, quantized):
    """A finished row's slot between two decoding rows keeps its context (a donor for a later row of the same
    prompt and mix): the step's dummy row there writes just after it (``plan.idle``), attending to no more."""
    _, qlm = quantized
    ids = qlm.prompt_ids(["could you please take a look at this when you have time?", "the food was great", "worst"])
    mixes = [[0.2, 0.8, 0, 0], [0, 0, 1, 0], [0.5, 0.5, 0, 0]]
    eng = qlm.engine(max_len=64, max_batch=3, share_prompts=True)
    eng.eos = set()
    plans = []
    step = eng.model
    eng.model = lambda plan, cache: plans.append(plan) or step(plan, cache)
    rows = [Sequence(ids[i], mixes[i], SamplingParams(n, 0, 1, 0, 0), seed=i) for i, n in ((1, 16), (0, 2), (2, 16))]
    for s in rows:  # slots 0, 1, 2
        eng.submit(s)
    while not rows[1].done:
        eng.step()
    held = len(rows[1].context) - 1
    assert eng.kept[1][1] == rows[1].context[:held]
    kept = [kv[:, 1, :, :held].clone() for kv in eng.cache]
    eng.step()
    eng.step()  # slots 0 and 2 decode, slot 1 runs a dummy row just after the context it keeps
    assert plans[-1].decode_slots == [0, 2] and plans[-1].idle[1] == held
    assert all(torch.equal(kv[:, 1, :, :held], k) for kv, k in zip(eng.cache, kept))


def test_quantised_engines_compute_every_prompt_whole(lm, quantized):
    """Per-block activation rounding makes a prompt's last token computed alone after a shared start differ from
    the same token inside its prompt's chunk, so the quantised steps do not share prompts unless asked; fp32 does.
    The step says so: an engine built on it directly takes the same default."""
    step, qlm = quantized
    assert not qlm.engine(max_len=64).share_prompts and lm.engine(max_len=64).share_prompts
    assert not Engine(step, [], max_len=64).share_prompts
    assert qlm.engine(max_len=64, share_prompts=True).share_prompts


def test_quantised_decode_rows_get_the_same_numbers_alone_and_together(lm, quantized):
    """A decoding row's logits are bit for bit the same alone, beside other rows and with dummy rows between them:
    every product sees the same row whatever the call's other rows (int8 blocks of 128 inputs summed a one-row
    product in another order than several rows', and the next product's int8 rounding can turn that into another
    token)."""
    step, _ = quantized
    ids = torch.randint(3, 300, (3, 10), generator=torch.Generator().manual_seed(11))
    cache = step.new_cache(6, 32)
    for row, slot in enumerate((0, 2, 5)):
        step(prefill_plan(ids[row : row + 1], COEFFS[row].expand(1, 10, 4), [slot]), cache)

    def decode(rows: list[int]) -> torch.Tensor:
        slots = [(0, 2, 5)[r] for r in rows]
        return step(StepPlan.decoding(ids[rows, 9], torch.full((len(rows),), 10), slots, COEFFS[rows]), cache)

    together = decode([0, 1, 2])  # slots 1, 3 and 4 are dummy rows
    for row in range(3):
        assert torch.equal(decode([row])[0], together[row])
    assert torch.equal(decode([0, 1]), together[:2])


@pytest.mark.parametrize("inputs", [512, 1536])
def test_int8_products_give_a_row_the_same_numbers_alone_and_among_rows(inputs):
    """The int8 blocks of a product of the real model's widths (``block_size``) sum one row's product in the same
    order as several rows': in blocks of 128 ``MatMulNBits`` did not, and the next product's int8 rounding turned that
    into other tokens for a row that decoded alone."""
    import numpy as np
    from onnx import TensorProto, helper

    from lerplm.engine.ortstep import Graph, new_session

    g = Graph()
    w = torch.randn(96, inputs, generator=torch.Generator().manual_seed(5)) * 0.05
    out = g.matmul("x", w, 8)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", inputs])
    y_info = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["M", 96])
    session = new_session(g.serialize("product", [x_info], [y_info]), 2)
    x = np.random.default_rng(0).standard_normal((3, inputs)).astype(np.float32)
    alone, together = session.run(None, {"x": x[:1]})[0], session.run(None, {"x": x})[0]
    assert np.array_equal(alone[0], together[0])


def test_quantised_engine_rows_do_not_depend_on_their_batch(lm, quantized):
    _, qlm = quantized
    lengths = [9, 3, 14, 6]
    eng = qlm.engine(max_len=128, max_batch=1)
    eng.eos = set()
    alone = [eng.run([s])[0].tokens for s in _seqs(qlm, lengths, temperature=0)]
    eng = qlm.engine(max_len=128, max_batch=3, prefill_chunk=7)
    eng.eos = set()
    assert [s.tokens for s in eng.run(_seqs(qlm, lengths, temperature=0))] == alone
    assert max(eng.stats.batch_sizes) == 3
    _check_shared_prompts(qlm, lambda **kw: _engine(qlm, share_prompts=True, **kw), turns_exact=False)  # when asked


def test_engine_samples_on_the_threads_its_step_asks_for(lm, quantized, monkeypatch):
    """The ONNX Runtime step asks for one torch thread while sampling (its workers still spin on the other
    cores); the caller's setting is back after each step, and the draws are those of any thread count."""
    import lerplm.engine.scheduler as scheduler

    _, qlm = quantized
    seen, real = [], scheduler.sample
    monkeypatch.setattr(scheduler, "sample", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    seqs = qlm.engine(max_len=128, max_batch=2).run(_seqs(qlm, [9, 3], temperature=0.9))
    assert set(seen) == {qlm.step_model.sampling_threads} == {1} and torch.get_num_threads() == before
    monkeypatch.setattr(qlm.step_model, "sampling_threads", None)  # sample on the caller's threads
    again = qlm.engine(max_len=128, max_batch=2).run(_seqs(qlm, [9, 3], temperature=0.9))
    assert [s.tokens for s in again] == [s.tokens for s in seqs] and seen[-1] == before


def test_step_graphs_hold_no_copy_of_the_embedding_table(fast):
    """The quantised step gathers input embeddings from the model's table (a constant would be a copy per session)."""
    import onnx

    from lerplm.engine.ortstep import Calibration, build_graph

    for prefill in (False, True):
        graph = onnx.load_from_string(build_graph(fast, 8, Calibration() if prefill else None)).graph
        assert [i.name for i in graph.input][0] == "embeds"
        assert all(tuple(t.dims) != tuple(fast.embed.shape) for t in graph.initializer)


def test_int4_blocks_reproduce_a_q4_1_grid_exactly():
    """Weights on GGUF's Q4_1 grid (lo + q * scale per 32 inputs: the embedded default's own weights) come
    back exactly; int8 blocks (the larger of 64 and 32 inputs that divides a layer's) stay within half a step."""
    from lerplm.engine.ortstep import block_size, dequantize_blocks, quantize_blocks

    gen = torch.Generator().manual_seed(0)
    lo, scale = torch.randn(48, 3, 1, generator=gen) * 0.1, torch.rand(48, 3, 1, generator=gen) * 0.02 + 1e-3
    q = torch.randint(0, 16, (48, 3, 32), generator=gen)
    q[..., 0], q[..., -1] = 0, 15  # as GGUF's quantiser makes them, every block spans its whole grid
    w = (lo + q * scale).reshape(48, 96)
    assert torch.allclose(dequantize_blocks(*quantize_blocks(w, 4), 96), w, atol=1e-6)
    for in_f, block in ((96, 32), (72, 32), (192, 64), (1536, 64)):  # 72: a partial last block
        assert block_size(in_f, 8) == block and block_size(in_f, 4) == 32
        x = torch.randn(48, in_f, generator=gen)
        step = x.abs().amax(1, keepdim=True) / 127
        assert ((dequantize_blocks(*quantize_blocks(x, 8, block), in_f) - x).abs() <= step / 2 + 1e-6).all()


def _params(n, temperature=1.0, top_p=1.0, top_k=0, seed=0, step=0):
    return BatchParams.from_lists(
        [float(temperature)] * n, [float(top_p)] * n, [top_k] * n, list(range(seed, seed + n)), [step] * n
    )


def test_sampler_draws_from_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    n = 20000
    tokens = sample(logits.expand(n, 5), _params(n))
    freq = torch.bincount(tokens, minlength=5).float() / n
    assert (freq - torch.softmax(logits[0], 0)).abs().max() < 0.015
    # top-p keeps the smallest set reaching p; top-k the k best; temperature 0 is greedy
    tokens = sample(logits.expand(n, 5), _params(n, top_p=0.8))
    assert set(tokens.tolist()) == {0, 1}
    tokens = sample(logits.expand(n, 5), _params(n, top_k=3))
    assert set(tokens.tolist()) == {0, 1, 2}
    assert sample(logits.expand(4, 5), _params(4, temperature=0)).tolist() == [0] * 4


def test_sampler_rows_are_independent_of_their_batch():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    lists = (
        [0.7, 1.0, 0.0, 1.3, 0.9, 1.0],
        [0.9, 1.0, 1.0, 0.5, 1.0, 0.95],
        [0, 0, 0, 0, 5, 2],
        [11, 12, 13, 14, 15, 16],
        [0, 3, 1, 7, 2, 9],
    )
    together = sample(logits, BatchParams.from_lists(*lists)).tolist()
    for i in range(6):
        one = BatchParams.from_lists(*([x[i]] for x in lists))
        assert sample(logits[i : i + 1], one).tolist() == [together[i]]
    # a pure function of (seed, step): reproducible, different across steps and seeds, strictly inside (0, 1)
    u = uniforms(torch.arange(1000) * 7919, torch.arange(1000))
    assert torch.equal(u, uniforms(torch.arange(1000) * 7919, torch.arange(1000)))
    assert len(set(u.tolist())) == 1000 and 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.03


def _full_sort_draw(logits, temperature, top_p, top_k, u):
    """Top-k / top-p by sorting the whole vocabulary, one row: the reference the capped sampler must equal."""
    probs, idx = torch.sort(torch.softmax(logits / temperature, -1), descending=True)
    probs = probs.double()
    if top_k:
        probs = torch.where(torch.arange(len(probs)) < top_k, probs, 0.0)
        probs = probs / probs.sum()
    probs = probs * ((probs.cumsum(0) - probs) <= top_p)
    cdf = probs.cumsum(0)
    return int(idx[torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=len(cdf) - 1)])


def _shelf(vocab: int, high: int, drop: float) -> torch.Tensor:
    """Logits of a row whose ``high`` likeliest tokens lie above the sampler's floor and hold too little of the
    probability for a top-p of 0.95: the nucleus reaches below the floor."""
    g = torch.Generator().manual_seed(high)
    row = torch.randn(vocab, generator=g) * 0.05 - drop  # no ties: one order of the tokens by probability
    row[torch.randperm(vocab, generator=g)[:high]] += drop
    return row


def test_top_p_on_a_large_vocabulary_equals_a_full_sort():
    # peaked rows (a few hundred tokens hold the nucleus) beside flat ones (the whole vocabulary), top-k beside top-p
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 20000, generator=g) * torch.tensor([8.0, 8.0, 6.0, 4.0, 1.0, 0.3, 8.0, 3.0])[:, None]
    logits[1] = _shelf(20000, 1000, 3.5)  # a nucleus that reaches below the sampler's floor
    lists = (
        [0.8, 1.0, 0.7, 1.2, 1.0, 1.0, 0.0, 0.9],
        [0.95, 0.9, 0.5, 0.99, 0.95, 0.9, 0.95, 1.0],
        [0, 0, 0, 0, 0, 0, 0, 40],
        list(range(8)),
        [3] * 8,
    )
    for step in range(20):
        params = BatchParams.from_lists(*lists[:4], [step] * 8)
        got = sample(logits, params).tolist()
        u = uniforms(params.seeds, params.steps)
        for i, (t, tp, tk) in enumerate(zip(*lists[:3])):
            want = int(logits[i].argmax()) if t == 0 else _full_sort_draw(logits[i], t, tp, tk, u[i])
            assert got[i] == want, (step, i)


def test_only_rows_with_a_wide_nucleus_search_further(monkeypatch):
    """Peaked rows draw among their tokens above the floor with no top-k search; a flat row (too many tokens above
    the floor to sort) and a row whose nucleus reaches below the floor search on their own, from the first cap
    above what their candidates held."""
    import lerplm.engine.sampling as sampling

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 20000, generator=g) * torch.tensor([8.0, 0.3, 8.0, 0.0])[:, None]  # row 1 is flat
    logits[3] = _shelf(20000, 1000, 3.5)  # 1,000 candidates, 0.63 of the probability
    calls, real = [], torch.topk
    monkeypatch.setattr(sampling.torch, "topk", lambda x, k, **kw: (calls.append((x.shape[0], k)), real(x, k, **kw))[1])
    sample(logits, _params(4, temperature=1.0, top_p=0.95))
    assert calls == [(2, 4096), (2, 20000)]
    calls.clear()
    sample(logits[[0, 2]], _params(2, temperature=1.0, top_p=0.95))
    assert calls == []


def test_penalties_and_logit_bias_act_as_openai_defines(lm):
    """Greedy under presence / frequency penalties and a logit bias: every token is the argmax of the model's
    logits less the penalties of the text so far, plus the bias; the reported log-probabilities stay the model's
    own; a row beside a plain one in a batch writes what it writes alone."""
    ids, coeffs = lm.prompt_ids(["the food was great"])[0], COEFFS[1].tolist()
    bias = {5: 3.0, 7: -2.0}
    params = SamplingParams(12, 0, presence_penalty=0.7, frequency_penalty=1.3, logit_bias=bias)
    seq = Sequence(ids, coeffs, params, 0, logprobs=0)
    plain = Sequence(ids, coeffs, SamplingParams(12, 0), 0)
    _engine(lm, max_batch=1).run([seq])
    _engine(lm, max_batch=1).run([plain])
    assert seq.tokens != plain.tokens  # the adjustments changed the text
    logits = lm.logits(torch.tensor([ids + seq.tokens[:-1]]), torch.tensor([coeffs]))[0, len(ids) - 1 :]
    for i, token in enumerate(seq.tokens):
        counts = torch.bincount(torch.tensor(seq.tokens[:i], dtype=torch.long), minlength=logits.shape[-1]).float()
        adjusted = logits[i] - 1.3 * counts - 0.7 * (counts > 0).float()
        adjusted[list(bias)] += torch.tensor(list(bias.values()))
        assert token == int(adjusted.argmax()), i
        assert abs(seq.token_logprobs[i][0] - float(torch.log_softmax(logits[i], -1)[token])) < 1e-4
    again = Sequence(ids, coeffs, params, 0)
    _engine(lm, max_batch=2).run([again, Sequence(ids, COEFFS[0].tolist(), SamplingParams(12, 0), 1)])
    assert again.tokens == seq.tokens


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"presence_penalty": 2.5}, "presence_penalty must lie in"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty must lie in"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias keys must be token ids"),
        ({"logit_bias": {5: 101.0}}, "logit_bias values must lie in"),
    ],
)
def test_bad_penalties_and_biases_are_refused(kwargs, message):
    with pytest.raises(LerpError, match=message):
        SamplingParams(4, **kwargs).validate()


def test_a_bias_outside_the_vocabulary_is_refused_before_it_runs(lm):
    eng = _engine(lm, max_batch=1)
    with pytest.raises(LerpError, match="token ids lie in"):
        eng.submit(Sequence([1, 2], [0.0] * 4, SamplingParams(4, logit_bias={10**6: 1.0}), 0))


def test_a_step_schedule_equals_each_segment_generated_by_its_own_model(lm):
    """Schedule sentiment 1 -> 0 at token 4 (step): the first 4 tokens are mix A's continuation of the
    prompt, the rest mix B's continuation of prompt + those tokens; tokens and logprobs agree."""
    from lerplm.mix import Mix, Schedule

    ids = lm.prompt_ids(["the food was great"])[0]
    a, b = Mix({"sentiment": 1.0}), Mix({"formality": 1.0})
    sched = lm.sequence(ids, Schedule(((0, a), (4, b)), "step"), SamplingParams(10, 0), 0, logprobs=0)
    _engine(lm, max_batch=2).run([sched, lm.sequence(ids, a, SamplingParams(7, 0.9), 3)])  # shares its batch
    head = lm.sequence(ids, a, SamplingParams(4, 0), 0, logprobs=0)
    _engine(lm, max_batch=1).run([head])
    tail = lm.sequence(ids + head.tokens, b, SamplingParams(6, 0), 0, logprobs=0)
    _engine(lm, max_batch=1).run([tail])
    assert sched.tokens == head.tokens + tail.tokens
    got = [lp for lp, _ in sched.token_logprobs]
    want = [lp for lp, _ in head.token_logprobs + tail.token_logprobs]
    assert got == pytest.approx(want, abs=1e-4)
    assert [i for i, _ in sched.mix_log] == [0, 4]
    # linear interpolation: each token's coefficients lie between the two points'
    lin = Schedule(((0, a), (8, b)), "linear").coefficient_fn(lm.anchors.names)
    assert lin(4) == pytest.approx([0.0, 0.5, 0.0, 0.5]) and lin(20) == lin(8) == [0.0, 0.0, 0.0, 1.0]


def test_min_new_tokens_holds_the_end_tokens_back(lm):
    ids = lm.prompt_ids(["the food was great"])[0]
    eng = lm.engine(max_batch=2, max_len=64)
    eos = lm.eos_ids()[0]
    eng.model = (lambda step: lambda plan, cache: step(plan, cache).index_fill(1, torch.tensor([eos]), 1e4))(eng.model)
    free, held = (
        Sequence(ids, [0.0] * 4, SamplingParams(9, 0), 0),
        Sequence(ids, [0.0] * 4, SamplingParams(9, 0, min_new_tokens=6), 1),
    )
    eng.run([free, held])
    assert free.tokens == [eos] and free.finish_reason == "stop"  # the end token is the model's favourite
    assert len(held.tokens) == 7 and eos not in held.tokens[:6] and held.tokens[6] == eos


@pytest.mark.parametrize("scheme", ["fp32", "int8"])
def test_a_merged_mix_steps_as_the_mixed_model_does_and_takes_that_mix_only(lm, scheme):
    """``merge``: the step's weights carry one mix's ΔW, so it runs without adapters and computes what the mixed
    model computes under that mix (fp32: to 1e-4; int8: within its tolerance), while the model's own weights and
    likelihoods stay the base's."""
    from lerplm.generate import LerpModel

    mix = "sentiment=0.7, formality=0.2"
    coeffs = lm.coefficients([mix])
    ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(9))
    base_before = lm.logits(ids, None)
    merged = LerpModel(lm.anchors, lm.model, lm.tokenizer, lm.runtime, lm.adapters, scheme)
    merged.merge(mix)
    step = merged.step_model
    assert getattr(step, "num_adapters", 0) == 0 and all(b.qkv.seg is None for b in getattr(step, "layers", []))
    want = lm.logits(ids, coeffs)
    got = step(prefill_plan(ids, None, [0]), step.new_cache(1, 32))
    tol = 1e-4 if scheme == "fp32" else QUANTIZED_TOL[scheme] * want.abs().max()
    assert (got - want[0]).abs().max() <= tol
    assert (lm.logits(ids, None) - base_before).abs().max() == 0  # the base weights came back untouched
    params = SamplingParams(6, temperature=0)
    mixed = LerpModel(lm.anchors, lm.model, lm.tokenizer, lm.runtime, lm.adapters, scheme)
    if scheme == "fp32":
        assert merged.generate(["a prompt"], mix, params=params) == mixed.generate(["a prompt"], mix, params=params)
    else:
        assert len(merged.generate(["a prompt"], {"formality": 0.2, "sentiment": 0.7}, params=params)) == 1
    for other in ("sentiment=0.5", None):
        with pytest.raises(LerpError, match="merged"):
            merged.generate(["a prompt"], other, params=params)
    with pytest.raises(LerpError, match="int4"):
        LerpModel(lm.anchors, lm.model, lm.tokenizer, lm.runtime, lm.adapters, "int4").merge(mix)
