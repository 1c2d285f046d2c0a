"""The pure context-window decisions: budgets, folds, token estimates."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.context_window import (
    Budget,
    TokenEstimator,
    is_summary_request,
    make_budget,
    plan_fold,
    plan_fold_ahead,
    summary_instruction,
    tokens_to_fit,
)

budgets = st.builds(
    lambda num_ctx, share: Budget(num_ctx, max(1, int(num_ctx * share))),
    st.integers(512, 65536),
    st.floats(0.05, 0.45),
)
turn_lists = st.lists(st.integers(1, 3000), max_size=80).map(
    lambda xs: xs[: len(xs) - len(xs) % 2]  # whole exchanges: user + assistant
)


@settings(max_examples=500, deadline=None)
@given(budgets, st.integers(0, 4000), turn_lists, st.integers(1, 4000))
def test_the_window_never_exceeds_the_budget(
    budget: Budget, fixed: int, turns: list[int], new: int
) -> None:
    assume(fixed + new <= budget.prompt)  # otherwise the message is refused
    drop = plan_fold(fixed, turns, new, budget)
    assert fixed + sum(turns[drop:]) + new <= budget.prompt
    assert drop % 2 == 0 or drop == len(turns)  # exchanges leave whole


@settings(max_examples=500, deadline=None)
@given(budgets, st.integers(0, 4000), turn_lists, st.integers(1, 4000))
def test_no_fold_while_it_fits_and_a_fold_frees_half_the_budget(
    budget: Budget, fixed: int, turns: list[int], new: int
) -> None:
    assume(fixed + new <= budget.target)
    drop = plan_fold(fixed, turns, new, budget)
    fits = fixed + sum(turns) + new <= budget.prompt
    assert (drop == 0) == fits  # the prefix stays the same while it fits
    if drop:
        assert fixed + sum(turns[drop:]) + new <= budget.target
        # ... and it folds no more than needed: keeping one more exchange would not fit.
        assert drop < 2 or fixed + sum(turns[drop - 2 :]) + new > budget.target


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 500), max_size=40), st.integers(1, 5000))
def test_tokens_to_fit_is_minimal(turns: list[int], limit: int) -> None:
    k = tokens_to_fit(0, turns, 0, limit)
    assert sum(turns[k:]) <= limit or k == len(turns)
    assert k == 0 or sum(turns[max(0, k - 2) :]) > limit


def test_a_long_message_keeps_what_still_fits_beside_it() -> None:
    budget = Budget(num_ctx=1000, reply_reserve=200)  # prompt 800, target 200
    drop = plan_fold(fixed=50, turns=[100, 100, 100, 100], new=500, budget=budget)
    assert drop == 2  # 50 + 200 + 500 = 750 <= 800


def test_budget_from_the_model_the_cap_and_num_predict() -> None:
    assert make_budget(131072, cap=8192) == Budget(8192, 2048)
    assert make_budget(2048, cap=8192) == Budget(2048, 512)
    assert make_budget(None, cap=None) == Budget(4096, 1024)
    assert make_budget(131072, cap=8192, num_predict=300) == Budget(8192, 300)
    assert make_budget(131072, cap=8192).target == (8192 - 2048) // 4


def test_estimator_starts_pessimistic_and_learns_from_ollama() -> None:
    estimator = TokenEstimator()
    text = "word " * 400  # 2000 characters
    before = estimator.count_text(text)
    # Ollama said these 2000 characters in 2 messages were 416 tokens (400 + template).
    estimator.calibrate(chars=2000, messages=2, observed_tokens=416)
    after = estimator.count_text(text)
    assert before > after >= 400  # fewer than first feared, still not fewer than real
    assert estimator.samples == 1


def test_small_samples_do_not_calibrate() -> None:
    estimator = TokenEstimator()
    estimator.calibrate(chars=100, messages=1, observed_tokens=5)
    assert estimator.samples == 0


def test_the_summary_instruction_names_the_block_and_is_recognised() -> None:
    instruction = summary_instruction(4, "Alice: I moved to Oslo last   week", has_summary=True)
    assert instruction["role"] == "user"
    assert "first 4 messages" in instruction["content"]
    assert '"Alice: I moved to Oslo last week"' in instruction["content"]
    assert "the summary above" in instruction["content"]
    conversation = [{"role": "user", "content": "hi"}]
    assert is_summary_request([*conversation, instruction])
    assert not is_summary_request(conversation)


@settings(max_examples=500, deadline=None)
@given(budgets, st.integers(0, 4000), turn_lists)
def test_a_fold_is_prepared_only_past_the_mark_and_brings_the_prompt_to_target(
    budget: Budget, fixed: int, turns: list[int]
) -> None:
    fold = plan_fold_ahead(fixed, turns, budget)
    if fixed + sum(turns) <= budget.fold_mark:
        assert fold == 0  # the prefix stays the same until then
    else:
        assert fold > 0 or not turns
        assert fixed + sum(turns[fold:]) <= budget.target or fold == len(turns)
        assert fold % 2 == 0 or fold == len(turns)  # exchanges leave whole
