import math

import pytest

from lerplm import LerpError, Mix
from lerplm.mix import parse_assignments

ATTRS = ["sentiment", "formality", "humor"]


def test_coefficients_follow_the_formula():
    m = Mix({"sentiment": 0.9, "formality": 0.3}, {"sentiment": 3, "formality": 1})
    c = m.coefficients(ATTRS)
    # sentiment w=0.75: neg 0.75*0.1, pos 0.75*0.9; formality w=0.25: neg 0.25*0.7, pos 0.25*0.3; humor w=0
    assert c == pytest.approx([0.075, 0.675, 0.175, 0.075, 0.0, 0.0])
    assert sum(c) == pytest.approx(1.0)


def test_equal_weights_by_default_and_unnamed_attributes_get_zero():
    c = Mix.from_spec("sentiment=1,humor=0").coefficients(ATTRS)
    assert c == pytest.approx([0, 0.5, 0, 0, 0.5, 0])


def test_paper_spellings_alpha_and_lambda_are_accepted():
    a = Mix.from_dict({"alpha": {"sentiment": 0.2, "humor": 0.6}, "lambda": {"sentiment": 1, "humor": 3}})
    b = Mix.from_dict({"levels": {"sentiment": 0.2, "humor": 0.6}, "weights": {"sentiment": 1, "humor": 3}})
    assert a.coefficients(ATTRS) == b.coefficients(ATTRS)
    assert Mix.from_dict({"sentiment": 0.2}).coefficients(ATTRS) == pytest.approx([0.8, 0.2, 0, 0, 0, 0])


@pytest.mark.parametrize(
    "levels, weights, message",
    [
        ("tone=0.5", None, "unknown attribute 'tone'; choose from: sentiment, formality, humor"),
        ("sentiment=1.5", None, "must lie in [0, 1]"),
        ("sentiment=-0.1", None, "must lie in [0, 1]"),
        ("sentiment=nan", None, "finite"),
        ("sentiment=inf", None, "finite"),
        ("sentiment=0.5", "sentiment=-1", "weights must be finite and >= 0"),
        ("sentiment=0.5,humor=0.5", "sentiment=0,humor=0", "all weights are zero"),
        ("sentiment=0.5", "humor=1", "has a weight but no level"),
        ("sentiment=0.5,humor=1", "humor=1", "has a level but no weight"),
    ],
)
def test_bad_mixes_name_the_problem(levels, weights, message):
    with pytest.raises(LerpError) as e:
        Mix.from_spec(levels, weights).coefficients(ATTRS)
    assert message in str(e.value)


@pytest.mark.parametrize("spec", ["sentiment", "sentiment=high", "=0.3", "", "sentiment=0.1,sentiment=0.2"])
def test_malformed_specs(spec):
    with pytest.raises(LerpError):
        parse_assignments(spec)


def test_extrapolation_allows_the_papers_stable_range():
    c = Mix.from_spec("sentiment=1.5").coefficients(ATTRS, extrapolate=True)
    assert c[:2] == pytest.approx([-0.5, 1.5])
    with pytest.raises(LerpError, match=r"\[-1, 2\]"):
        Mix.from_spec("sentiment=2.5").coefficients(ATTRS, extrapolate=True)


def test_wrong_types_in_dict_mixes():
    with pytest.raises(LerpError, match="must be a number"):
        Mix.from_dict({"levels": {"sentiment": "high"}})
    with pytest.raises(LerpError, match="must be a number"):
        Mix.from_dict({"levels": {"sentiment": True}})
    with pytest.raises(LerpError, match="unknown mix field"):
        Mix.from_dict({"levels": {"sentiment": 0.5}, "temperature": 1})
    assert not math.isnan(sum(Mix.from_dict({"sentiment": 0}).coefficients(ATTRS)))
