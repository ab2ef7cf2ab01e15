"""`horse plan` is a dry run that stays light (no torch, Ray or Prefect), pages its table, prints
one complete JSON document whose fields the README documents and warns above a budget; `horse
render` refuses a quote over a budget with one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from catalog import Store
from model import describe_tiny
from tests.cli.cli_testlib import config_file, horse, manifest, one_json_document

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
# ... and the libraries that measure (scipy: QC) and hear (jiwer: the dialogue gate) clips.
ENGINES = ("torch", "diffusers", "transformers", "ray", "prefect", "scipy", "jiwer")
# `horse ARGS` in a fresh interpreter that says, as it exits, which engines the command loaded.
FRESH = (
    "import atexit, json, sys\n"
    f"atexit.register(lambda: sys.stderr.write('\\nLOADED ' + json.dumps([m for m in {ENGINES!r} if m in sys.modules])))\n"
    "sys.argv = ['horse', *json.loads(sys.argv[1])]\n"
    "from flows.cli import main\n"
    "main()\n"
)


def plan_in_a_fresh_process(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    result = subprocess.run([sys.executable, "-c", FRESH, json.dumps(["plan", *args])], capture_output=True, text=True,
                            timeout=300)
    loaded = re.search(r"\nLOADED (\[.*\])", result.stderr)
    assert loaded, result.stderr[-2000:]
    return result, json.loads(loaded.group(1))


def test_plan_loads_no_engine_pages_its_table_and_documents_its_json(tmp_path, tmp_store):
    path = manifest(tmp_path / "m.parquet", shots=3, languages=["en", "de"], aspect_ratios=["16:9", "9:16"])
    store = Store(tmp_store)  # one render of this model on this machine's CPU: the quote learns from it
    store.index.commit([{"render_key": "a" * 64, "campaign_id": "earlier", "shot_id": "s1", "variant": "en-16x9-t1",
                         "status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64,
                         "model_fingerprint": describe_tiny().fingerprint, "profile": "distill", "device_type": "cpu",
                         "device_seconds": {"base": 2.0, "decode": 1.0, "encode": 0.5}, "resolution": "256p",
                         "duration_s": 1.0, "created_at": datetime.now(timezone.utc)}])

    result, loaded = plan_in_a_fresh_process(str(path), "--json", "--store", tmp_store, "--gpus", "2", "--by", "07:00",
                                             "--budget-gpu-hours", "0.000001")
    assert result.returncode == 0, result.stderr[-2000:]
    assert loaded == [], "planning needs no torch, no Ray, no Prefect, nor what QC and the dialogue gate load"
    document = one_json_document(result)
    assert len(document["plan"]) == document["jobs"] == 12, "--json lists every job"
    assert document["quote"]["gpu_seconds"] == 12 * 3.5 and document["quote"]["device_type"] == "cpu"
    assert {s["stage"]: s["basis"] for s in document["quote"]["stages"]} == {
        "base": "history", "decode_256p": "history", "encode_256p": "history"}
    assert document["time_to_finish"]["slots"] == 2 and "fits" in document["time_to_finish"]
    assert document["warnings"] == ["over budget: run budget of 1e-06 GPU-hours; the quote is 0.0117 GPU-hours"]

    section = README.read_text().split("## Cost, budgets and priorities", 1)[1].split("\n## ", 1)[0]
    documented = {part.removesuffix("[]") for name in re.findall(r"`([a-z_.\[\]]+)`", section) for part in name.split(".")}
    fields = {*document, *document["quote"], *document["quote"]["stages"][0], *document["quote"]["previews"],
              *document["time_to_finish"], *document["budgets"][0], *document["plan"][0]}
    assert fields - documented == set(), "every --json field is described in the README"

    human, loaded = plan_in_a_fresh_process(str(path), "--store", tmp_store, "--rows", "5")
    assert human.returncode == 0 and loaded == []
    assert len(re.findall(r"^│ ", human.stdout, re.MULTILINE)) == 5, "a table of the first 5 jobs"
    assert "... and 7 more (--rows N shows more, --json lists every job)" in human.stdout
    assert "12 jobs: 0 already rendered, 12 to render" in human.stdout


def test_render_refuses_a_quote_over_budget_in_one_line(tmp_path, tmp_store, prefect_api):
    path = manifest(tmp_path / "m.parquet", shots=2)
    result = horse("render", str(path), "--json", "--store", tmp_store, "--config", config_file(tmp_path),
                   "--budget-gpu-hours", "0.000001")
    document = one_json_document(result)
    assert result.returncode == 2 and document["ok"] is False, result.stderr[-2000:]
    assert document["error"].startswith("over budget: run budget of 1e-06 GPU-hours; the quote is 0.000256 GPU-hours "
                                        "(--allow-over-budget") and "\n" not in document["error"], document["error"]
    assert Store(tmp_store).versions.latest("cli-spring") is None
