"""Task generators and their exact checkers: a correct solution always checks, a corrupted
step or answer never does; generation is a function of the seed."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.zoo.tasks import (
    EOS,
    STEP_SEPARATOR,
    arith_example,
    check_answer,
    check_arith_step,
    check_arith_steps,
    classify_example,
    classify_stream,
    long_tailed_steps,
    make_examples,
    retrieval_example,
    split_steps,
)

seeds = st.integers(0, 2**32 - 1)


@given(seeds, st.integers(1, 12), st.integers(1, 3), st.data())
@settings(max_examples=200, deadline=None)
def test_reference_arith_solution_checks(seed, steps, digits, data):
    operand_digits = data.draw(st.integers(1, digits))
    ex = arith_example(random.Random(seed), steps, digits, operand_digits)
    assert ex.difficulty == steps and ex.completion.endswith(EOS)
    assert check_arith_steps(ex, ex.completion) == [True] * steps
    assert check_answer(ex, ex.completion)
    numbers = [int(t) for t in re.findall(r"\d+", ex.text)]
    assert all(0 <= v < 10**digits for v in numbers)
    assert all(1 <= n < 10**operand_digits for _, n in ex.meta["ops"])


def test_arith_rejects_operands_wider_than_the_count():
    with pytest.raises(ValueError, match="operand_digits=3"):
        arith_example(random.Random(0), 2, digits=2, operand_digits=3)


@given(seeds, st.integers(1, 12), st.data())
@settings(max_examples=200, deadline=None)
def test_a_corrupted_step_never_checks(seed, steps, data):
    ex = arith_example(random.Random(seed), steps)
    lines = split_steps(ex.completion)
    i = data.draw(st.integers(0, steps - 1))
    said, equation = lines[i].split(": ")
    a, op, b, _, c = equation.split(" ")
    kind = data.draw(st.sampled_from(["result", "operand", "start", "op", "garble", "sentence"]))
    delta = data.draw(st.integers(1, 50))
    if kind == "sentence":  # the right equation under another step's (or a changed) sentence
        other = ex.meta["sentences"][(i + 1) % steps][:-1] if steps > 1 else said + " now"
        bad = f"{other if other != said else said + ' now'}: {equation}"
    elif kind == "result":
        bad = f"{said}: {a} {op} {b} = {int(c) + delta}"
    elif kind == "operand":  # the arithmetic is right but the problem's number is not used
        b2 = int(b) + delta
        bad = f"{said}: {a} {op} {b2} = {int(a) + b2 if op == '+' else int(a) - b2}"
    elif kind == "start":  # right arithmetic from a wrong running count
        a2 = int(a) + delta
        bad = f"{said}: {a2} {op} {b} = {a2 + int(b) if op == '+' else a2 - int(b)}"
    elif kind == "op":
        op2 = "-" if op == "+" else "+"
        bad = f"{said}: {a} {op2} {b} = {int(a) + int(b) if op2 == '+' else int(a) - int(b)}"
    else:
        bad = lines[i].replace(" = ", "=")
    assert check_arith_step(ex, i, f"{said}: {equation}")
    assert not check_arith_step(ex, i, bad)
    assert check_arith_step(ex, i, lines[i])


@given(seeds, st.integers(1, 12), st.integers(1, 99))
@settings(max_examples=100, deadline=None)
def test_a_wrong_final_answer_never_checks(seed, steps, delta):
    ex = arith_example(random.Random(seed), steps)
    wrong = ex.completion.replace(f"Answer: {ex.answer}", f"Answer: {int(ex.answer) + delta}")
    assert not check_answer(ex, wrong)
    assert not check_answer(ex, ex.completion.split("Answer:")[0])  # no answer at all


def test_steps_are_separated_by_a_blank_line():
    ex = arith_example(random.Random(0), 3)
    assert ex.completion.count(STEP_SEPARATOR) == 3 and len(split_steps(ex.completion)) == 3


def test_step_counts_are_long_tailed():
    rng = random.Random(0)
    draws = [long_tailed_steps(rng) for _ in range(20000)]
    share = {k: draws.count(k) / len(draws) for k in (1, 2, 4, 8, 12)}
    assert share[1] > share[2] > share[4] > share[8] > share[12] > 0
    assert sum(d <= 4 for d in draws) / len(draws) > 0.75


@given(seeds, st.integers(1, 4))
@settings(max_examples=100, deadline=None)
def test_retrieval_answer_follows_the_facts(seed, hops):
    ex = retrieval_example(random.Random(seed), hops)
    facts = ex.prompt.split("\n")[0]
    chain = ex.meta["chain"]
    for a, b in zip(chain, chain[1:], strict=False):
        assert f"The friend of {a} is {b}." in facts
    assert ex.prompt.count("the friend of") == hops - 1
    assert any(
        f in facts
        for f in (
            f"{chain[-1]} likes {ex.answer}.",
            f"{chain[-1]} has a {ex.answer}.",
            f"{chain[-1]} lives in {ex.answer}.",
        )
    )
    assert check_answer(ex, ex.completion) and not check_answer(ex, "nothing" + EOS)


@given(seeds, st.sampled_from([1, 3, 5, 7, 9]))
@settings(max_examples=100, deadline=None)
def test_classify_label_is_the_majority(seed, margin):
    ex = classify_example(random.Random(seed), margin)
    words = ex.prompt.split("\n")[0].removeprefix("Review: ").split()
    pos = sum(
        w in ("good", "great", "fine", "nice", "superb", "lovely", "happy", "bright") for w in words
    )
    assert abs(pos - (len(words) - pos)) == margin
    assert ex.answer == ("pos" if pos > len(words) - pos else "neg")


def test_classify_drift_moves_the_mix_towards_hard():
    stream = list(classify_stream(0, 4000, drift=0.6))
    early = sum(e.difficulty == 1 for e in stream[:1000]) / 1000
    late = sum(e.difficulty == 1 for e in stream[-1000:]) / 1000
    assert late - early > 0.3
    flat = list(classify_stream(0, 4000))
    assert (
        abs(
            sum(e.difficulty == 1 for e in flat[:1000])
            - sum(e.difficulty == 1 for e in flat[-1000:])
        )
        < 100
    )


@pytest.mark.parametrize("task", ["arith", "retrieval", "classify", "text"])
def test_examples_are_a_function_of_the_seed(task):
    assert make_examples(task, 5, 20) == make_examples(task, 5, 20)
    assert make_examples(task, 5, 20) != make_examples(task, 6, 20)


def test_text_passages_come_from_the_shipped_documents():
    from core.zoo.tasks import text_documents

    docs = text_documents()
    assert len(docs) == 9
    for ex in make_examples("text", 0, 10, documents=docs):
        assert any((ex.prompt + ex.answer) in text for _, text in docs)


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="steps"):
        arith_example(random.Random(0), 0)
    with pytest.raises(ValueError, match="hops"):
        retrieval_example(random.Random(0), 5)
    with pytest.raises(ValueError, match="margin"):
        classify_example(random.Random(0), 2)
    with pytest.raises(ValueError, match="unknown task"):
        make_examples("poetry", 0, 1)
