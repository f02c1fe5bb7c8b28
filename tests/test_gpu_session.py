"""The campaign chunk of tests/gpu/session.sh, on this CPU: a GPU held for minutes has none for a script's
bugs. It starts the launcher in its own session in the regime a survey named, brings the records back as one
archive, and a second call finds the runs done."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from repro import layout, records
from tests.helpers import ROOT, configs

CAMPAIGN = "table1 --datasets fashion_mnist --profile smoke --columns avgpool flexpool --seeds 1"


def call(phase: str, state: Path, out: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"FLEXPOOL_OUT": str(out), "FLEXPOOL_STATE": str(state), "FLEXPOOL_CAMPAIGN": CAMPAIGN,
                        "FLEXPOOL_SECONDS": "240", "FLEXPOOL_GIT_COMMIT": "0" * 40,
                        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # its python3
    return subprocess.run(["bash", "tests/gpu/session.sh", phase], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_campaign_call_trains_in_the_surveyed_regime_and_brings_the_records_back(tmp_path, data_root):
    state = data_root.parent  # the script's data folder is <state>/data: the tiny data sets
    (state / "bench").mkdir()
    (state / "bench" / "cuda-20990101T000000.json").write_text(
        json.dumps({"best": {"regime": "off/bf16", "runs": 2}}))
    first = call("campaign", state, tmp_path / "out1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "campaign: table1 --datasets fashion_mnist --profile smoke --columns avgpool flexpool --seeds 1, " \
           "--compile off --runs-per-gpu 2" in first.stdout
    assert "2 done" in (tmp_path / "out1" / "status.txt").read_text()
    with tarfile.open(tmp_path / "out1" / "records.tgz") as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "back", filter="data")
    for config in configs(tmp_path, data_root, columns=["avgpool", "flexpool"]):
        path = layout.record_path(config).relative_to(tmp_path / "results")
        record = records.read_record(tmp_path / "back" / path)
        assert record["status"] == "completed" and record["env"]["git_commit"] == "0" * 40
    assert any(n.startswith("slurm-logs/runs/") and n.endswith(".log") for n in names)

    second = call("campaign", state, tmp_path / "out2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to submit" in (tmp_path / "out2" / "launch.log").read_text()
    assert "2 done" in (tmp_path / "out2" / "status.txt").read_text()
