"""The first hour, as a newcomer lives it: `horse ui`, `horse demo`, the run in a real browser.

Headless Chromium (Debian's `chromium`, installed by .ci/run) loads the Prefect UI served by
`horse ui` after a demo run; the test reads the rendered DOM and keeps screenshots in
test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import av
import httpx
import pytest

from catalog import Store
from tests.conftest import free_port, require

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, *, screenshot: str | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot if asked)."""
    profile = tempfile.mkdtemp(prefix="horse-chromium-")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--run-all-compositor-stages-before-draw", "--virtual-time-budget=30000", "--window-size=1400,1000"]
    try:
        if screenshot:
            subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
        return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def horse_ui(tmp_path):
    """`horse ui` on a free port with its own Prefect database."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json() is True:
                break
        except (httpx.HTTPError, ValueError):
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"horse ui did not come up: {process.stdout.read()}")
    yield f"http://127.0.0.1:{port}", process
    if process.poll() is None:
        process.kill()


@pytest.fixture
def chromium_installed() -> None:
    require(CHROMIUM, "Debian's chromium (apt-get install -y chromium)")


def test_demo_then_prefect_ui_in_a_browser(chromium_installed, horse_ui, tmp_path, artifacts_dir):
    base_url, ui_process = horse_ui
    env = {**os.environ, "PREFECT_API_URL": f"{base_url}/api"}
    demo = subprocess.run([sys.executable, "-m", "flows.cli", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "published aurora-tea-launch version 1" in demo.stdout
    assert "contact sheet for aurora-tea-launch" in demo.stdout

    store = Store(str(tmp_path / "horse-store"))
    version = store.versions.read("aurora-tea-launch", 1)
    assert len(version["entries"]) == 14 and all(e["status"] == "ok" for e in version["entries"])
    first = version["entries"][0]
    with store.open_blob(first["blob_uri"]) as f, av.open(f) as container:
        tags = container.metadata  # what `ffprobe -show_format` lists as format tags
    assert tags["horse_render_key"] == first["render_key"]
    assert tags["horse_campaign"] == "aurora-tea-launch"
    assert tags["horse_shot"] == first["shot_id"] and tags["horse_variant"] == first["variant"]
    assert tags["horse_seed"] == str(first["seed"])
    assert tags["horse_model_fingerprint"] == version["model_fingerprint"]
    # Delivery QC: each clip checked against the brief's destinations on the actor, a master stored for each.
    assert all(set(e["qc"]) == {"social", "broadcast-eu"} and e["qc_status"] in ("passed", "failed")
               for e in version["entries"])
    assert all(store.blob_exists(r["master_sha256"], "mp4") for r in first["qc"].values())
    qc = subprocess.run([sys.executable, "-m", "flows.cli", "qc", "aurora-tea-launch", "--json"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
    checked = json.loads(qc.stdout)
    assert (checked["passed"] + checked["failed"], checked["not_checked"]) == (28, 0)
    assert qc.returncode == (1 if checked["failed"] else 0)

    again = subprocess.run([sys.executable, "-m", "flows.cli", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "everything was already rendered" in again.stdout
    as_json = subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    document = json.loads(as_json.stdout)  # one JSON document and nothing else
    assert as_json.returncode == 0 and (document["rendered"], document["cached"]) == (0, 14)

    runs = httpx.post(f"{base_url}/api/flow_runs/filter", json={"limit": 10}).json()
    run = min((r for r in runs if r["state_type"] == "COMPLETED"), key=lambda r: r["start_time"])  # the run that rendered
    run_page = chromium(f"{base_url}/runs/flow-run/{run['id']}", screenshot=str(artifacts_dir / "ui-flow-run.png"))
    assert run["name"] in run_page, "the flow run page shows the run"
    assert "nightly-campaign-render" in run_page
    artifacts_page = chromium(f"{base_url}/artifacts", screenshot=str(artifacts_dir / "ui-artifacts.png"))
    for key in ("aurora-tea-launch-summary", "aurora-tea-launch-progress", "aurora-tea-launch-qc"):
        assert key in artifacts_page, f"artifact {key} is listed"

    tables = httpx.post(f"{base_url}/api/artifacts/filter", json={"artifacts": {"key": {"any_": ["aurora-tea-launch-qc"]}}}).json()
    assert tables, "the run made a QC table artifact"
    table = min(tables, key=lambda a: a["created"])  # the first run's
    qc_page = chromium(f"{base_url}/artifacts/artifact/{table['id']}", screenshot=str(artifacts_dir / "ui-qc-table.png"))
    for text in ("loudness_lufs", "true_peak_dbtp", "s010-kitchen-hello", "s030-friends-toast", "broadcast-eu", "social"):
        assert text in qc_page, f"the QC table shows {text}"
    assert qc_page.count("broadcast-eu") >= 14, "a row per clip and destination"

    summaries = httpx.post(f"{base_url}/api/artifacts/filter", json={"artifacts": {"key": {"any_": ["aurora-tea-launch-summary"]}}}).json()
    summary = next(a for a in summaries if "version 1" in a["data"])  # the first run's (the rerun made version 2)
    summary_page = chromium(f"{base_url}/artifacts/artifact/{summary['id']}", screenshot=str(artifacts_dir / "ui-summary.png"))
    assert "aurora-tea-launch: version 1" in summary_page
    assert '<img src="data:image/jpeg;base64,' in summary_page or 'src="data:image/jpeg;base64,' in summary_page, \
        "the contact sheet is shown in the summary"

    ui_process.send_signal(signal.SIGINT)
    assert ui_process.wait(timeout=30) == 0, "horse ui stops cleanly on Ctrl-C"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base_url}/api/health", timeout=2)
