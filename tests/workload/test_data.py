"""The shipped traces: present, licensed, attributed, and recorded when read."""

import hashlib

import pytest

from core.data import DATA_DIR, files_read, reset_files_read
from core.workload import (
    load_azure,
    load_loogle,
    load_mooncake,
    load_toolbench,
    load_toolbench_queries,
)

TRACES = DATA_DIR / "traces"
README = (DATA_DIR / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "folder", ["azure-llm-2023", "mooncake", "loogle", "toolbench", "shockwave"]
)
def test_every_trace_folder_has_its_license_and_a_readme_row(folder):
    assert (TRACES / folder / "LICENSE").is_file()
    files = [p for p in (TRACES / folder).rglob("*") if p.is_file() and p.name != "LICENSE"]
    assert files
    for p in files:
        rel = p.relative_to(DATA_DIR).as_posix()
        # ToolBench's 20 files and Shockwave's traces are listed by pattern; the others by name.
        top = "/".join(rel.split("/")[:3])  # traces/toolbench/answer, traces/toolbench/instruction
        listed = (
            rel in README
            or (folder == "toolbench" and f"`{top}/" in README)
            or (rel.endswith(".trace") and f"`traces/{folder}/*.trace`" in README)
        )
        assert listed, rel


def test_readme_names_sources_commits_licenses_and_citations():
    for needle in (
        "Azure/AzurePublicDataset",
        "b469a113",
        "CC-BY-4.0",
        "Splitwise",
        "ISCA 2024",
        "kvcache-ai/Mooncake",
        "3b5a5941",
        "FAST 2025",
        "bigai-nlco/LooGLE",
        "67343822",
        "ACL 2024",
        "OpenBMB/ToolBench",
        "d56fdd89",
        "ICLR 2024",
    ):
        assert needle in README, needle


def test_every_trace_folder_is_checked_here():
    folders = {p.name for p in TRACES.iterdir() if p.is_dir()}
    assert folders == {"azure-llm-2023", "mooncake", "loogle", "toolbench", "shockwave"}


def test_loaders_record_every_file_they_read_with_its_sha256():
    reset_files_read()
    load_azure(kind="code", limit=1)
    load_mooncake(limit=1)
    load_loogle(task="both", max_documents=1)
    load_toolbench(max_trajectories=1)
    load_toolbench_queries(groups=["G1"])
    read = files_read()
    expected = [
        TRACES / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv",
        TRACES / "mooncake" / "synthetic_trace.jsonl",
        TRACES / "loogle" / "longdep_qa.jsonl",
        TRACES / "loogle" / "shortdep_qa.jsonl",
        TRACES / "toolbench" / "answer" / "G1_answer" / "10_ChatGPT_DFS_woFilter_w2.json",
        TRACES / "toolbench" / "instruction" / "G1_query.json",
    ]
    for path in expected:
        key = str(path.resolve())
        assert read[key] == hashlib.sha256(path.read_bytes()).hexdigest(), path
