"""The engine end to end against transformers, and its cache, preemption and pause paths."""

from __future__ import annotations

import pytest

from core.engine import LLM, SamplingParams
from core.kv import CheckpointAtBranchesAndLeaves, CheckpointEveryK
from core.model.errors import MissingCheckpointFileError

from .conftest import hf_greedy, prompts

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mixtral", "bamba"])
def test_greedy_equals_transformers_generate(arch, checkpoint):
    model, path = checkpoint(arch)
    ps = prompts([5, 17, 33, 9], seed=1)
    # a small token budget forces chunked prefill mixed with decodes
    llm = LLM(path, block_size=4, max_num_batched_tokens=16, num_kv_blocks=128)
    outs = llm.generate(ps, GREEDY, use_tqdm=False)
    for p, o in zip(ps, outs, strict=True):
        assert o.finish_reason == "length"
        assert o.token_ids == hf_greedy(model, p, 8), arch


@pytest.mark.parametrize("prefix_cache", ["block", "radix"])
def test_prefix_hit_gives_the_cold_tokens_dense(prefix_cache, checkpoint):
    _, path = checkpoint("llama")
    shared = prompts([24], seed=2)[0]
    ps = [shared + t for t in prompts([3, 6, 5], seed=3)]
    cold = LLM(path, block_size=4, enable_prefix_caching=False, num_kv_blocks=128)
    want = [o.token_ids for o in cold.generate(ps, GREEDY, use_tqdm=False)]
    warm = LLM(path, block_size=4, prefix_cache=prefix_cache, num_kv_blocks=128)
    first = warm.generate(ps[:1], GREEDY, use_tqdm=False)
    rest = warm.generate(ps[1:], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in first + rest] == want
    assert all(o.num_cached_tokens >= 24 for o in rest)


def test_hybrid_hit_at_a_mid_prompt_checkpoint(checkpoint):
    """Two prompts share P; the second one's match ends inside the first one's edge, so its
    prefill stops at len(P) and the SSM state there is checkpointed; a third prompt with P
    then resumes from that mid-prompt checkpoint. Tokens equal a cold run throughout."""
    _, path = checkpoint("bamba")
    p = prompts([13], seed=4)[0]
    a, b, c = (p + t for t in prompts([5, 4, 6], seed=5))
    cold = LLM(path, enable_prefix_caching=False, block_size=1, num_kv_blocks=512)
    want = [o.token_ids for o in cold.generate([a, b, c], GREEDY, use_tqdm=False)]
    warm = LLM(path, block_size=1, num_kv_blocks=512, admission=CheckpointAtBranchesAndLeaves())
    got = [warm.generate([x], GREEDY, use_tqdm=False)[0] for x in (a, b, c)]
    assert [o.token_ids for o in got] == want
    assert got[0].num_cached_tokens == 0
    assert got[1].num_cached_tokens == 0  # a's leaf checkpoint is past the branch point
    assert got[2].num_cached_tokens == len(p)  # the branch-point checkpoint


def test_checkpoints_beyond_the_state_slots_are_skipped_not_fatal(checkpoint):
    """Checkpoints every 4 tokens of a 30-token prompt want 7 slots; with 3 the engine skips
    the ones it cannot hold, and the tokens still equal a cold run."""
    _, path = checkpoint("bamba")
    ps = prompts([30, 29], seed=6)
    cold = LLM(path, enable_prefix_caching=False, block_size=4, num_kv_blocks=128)
    want = [o.token_ids for o in cold.generate(ps, GREEDY, use_tqdm=False)]
    warm = LLM(
        path,
        block_size=4,
        num_kv_blocks=128,
        num_state_slots=3,
        max_num_seqs=1,
        admission=CheckpointEveryK(4),
    )
    got = [warm.generate([p], GREEDY, use_tqdm=False)[0].token_ids for p in ps]
    assert got == want
    assert warm.engine.scheduler.kv.skipped_checkpoints > 0


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_keeps_outputs(mode, checkpoint):
    _, path = checkpoint("llama")
    ps = prompts([12, 9, 15, 11, 7, 14], seed=6)
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    big = LLM(path, block_size=4, num_kv_blocks=256)
    want = [o.token_ids for o in big.generate(ps, sp, use_tqdm=False)]
    small = LLM(
        path,
        block_size=4,
        num_kv_blocks=14,
        preemption_mode=mode,
        num_host_blocks=64,
        enable_prefix_caching=False,
    )
    outs = small.generate(ps, sp, use_tqdm=False)
    assert [o.token_ids for o in outs] == want
    assert sum(o.metrics["num_preemptions"] for o in outs) > 0


def test_bad_prompts_error_while_others_finish(checkpoint):
    _, path = checkpoint("llama")
    llm = LLM(path, max_model_len=64, num_kv_blocks=64)
    ok = prompts([6], seed=7)[0]
    outs = llm.generate([ok, [], list(range(3, 103))], GREEDY, use_tqdm=False)
    assert outs[0].finish_reason == "length" and len(outs[0].token_ids) == 8
    assert outs[1].finish_reason == "error" and "empty prompt" in outs[1].error
    assert outs[2].finish_reason == "error" and "max_model_len=64" in outs[2].error


def test_invalid_sampling_params_raise_at_submission():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_missing_model_directory_names_the_file(tmp_path):
    with pytest.raises(MissingCheckpointFileError, match="config.json"):
        LLM(tmp_path)


def test_seeded_sampling_is_reproducible_across_batches(checkpoint):
    _, path = checkpoint("llama")
    ps = prompts([7, 11, 5], seed=8)
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6, seed=123, ignore_eos=True)
    llm = LLM(path, num_kv_blocks=64)
    alone = llm.generate([ps[1]], sp, use_tqdm=False)[0].token_ids
    batched = llm.generate(ps, sp, use_tqdm=False)[1].token_ids
    assert alone == batched


def test_request_output_gives_latencies_from_its_timeline():
    from core.engine.engine import RequestOutput
    from core.metrics import RequestRecord

    out = RequestOutput(
        "r",
        [1, 2],
        [5, 6, 7],
        True,
        "length",
        metrics={
            "arrival_time": 100.0,
            "first_token_time": 100.5,
            "token_times": [100.5, 100.7, 101.1],
            "finish_time": 101.1,
        },
    )
    assert out.ttft == pytest.approx(0.5) and out.e2e == pytest.approx(1.1)
    assert out.tpot == pytest.approx(0.3)
    rec = RequestRecord.from_output(out)
    assert (rec.ttft, rec.tpot, rec.e2e) == pytest.approx((out.ttft, out.tpot, out.e2e))
    running = RequestOutput(
        "r", [1], [5], False, metrics={"arrival_time": 1.0, "first_token_time": 2.0}
    )
    assert running.e2e is None and running.tpot is None and running.ttft == 1.0


def test_any_of_several_eos_ids_stops_a_request(checkpoint):
    """Engine.add_request takes the model's EOS id or several (a config's list): sampling any
    of them stops the request; an empty list is no EOS."""
    _, path = checkpoint("llama")
    llm = LLM(path, num_kv_blocks=64, block_size=4)
    prompt = prompts([9], seed=4)[0]
    free = llm.generate([prompt], GREEDY, use_tqdm=False)[0].token_ids
    k = next((i for i in range(1, len(free)) if free[i] not in free[:i]), 0)
    unused = next(t for t in range(512) if t not in free)
    sp = SamplingParams(temperature=0, max_tokens=len(free))
    stop, length = (free[: k + 1], "FINISHED_STOPPED"), (free, "FINISHED_LENGTH")
    cases = [([unused, free[k]], stop), ((free[k],), stop), (free[k], stop)]
    cases += [(unused, length), ([], length), (None, length)]
    for i, (eos, (tokens, status)) in enumerate(cases):
        req = llm.engine.add_request(f"r{i}", prompt, sp, eos_token_id=eos)
        while not req.is_finished:
            llm.engine.step()
        assert (req.output_token_ids, req.status.name) == (tokens, status), eos


def test_llm_stops_on_any_eos_id_its_config_lists(checkpoint, tmp_path):
    """A config whose eos_token_id is a list: LLM.generate stops on the second id too."""
    import json
    import shutil

    _, path = checkpoint("llama")
    prompt = prompts([9], seed=4)[0]
    free = LLM(path, num_kv_blocks=64, block_size=4).generate([prompt], GREEDY, use_tqdm=False)
    tokens = free[0].token_ids
    k = next((i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i]), 0)
    unused = next(t for t in range(512) if t not in tokens)
    listed = tmp_path / "listed"
    shutil.copytree(path, listed)
    config = json.loads((listed / "config.json").read_text())
    config["eos_token_id"] = [unused, tokens[k]]
    (listed / "config.json").write_text(json.dumps(config))
    sp = SamplingParams(temperature=0, max_tokens=len(tokens))
    out = LLM(listed, num_kv_blocks=64, block_size=4).generate([prompt], sp, use_tqdm=False)[0]
    assert out.token_ids == tokens[: k + 1] and out.finish_reason == "stop"
