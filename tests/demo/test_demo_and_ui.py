"""The first hour, as a newcomer lives it: `horse ui`, `horse demo`, the run in a real browser.

Headless Chromium (Debian's `chromium`, installed by .ci/run) loads the Prefect UI served by
`horse ui` after a demo run; the test reads the rendered DOM and keeps screenshots in
test-artifacts/.
"""

from __future__ import annotations

import base64
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
from tests.conftest import ctrl_c_reaches_children, free_port, require

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_clicking(url: str, button: str, until: str, screenshot: str) -> str:
    """The DOM after clicking the first `button` (by its text) once the page shows it and waiting
    for `until` to appear: headless Chromium driven over the DevTools protocol."""
    from websockets.sync.client import connect

    port, profile = free_port(), tempfile.mkdtemp(prefix="horse-chromium-")
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                                f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next(p for p in pages if p["type"] == "page")
                break
            except (httpx.HTTPError, StopIteration):
                assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
                time.sleep(0.5)
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 10_000))

            def call(method: str, **params):
                number = next(calls)
                ws.send(json.dumps({"id": number, "method": method, "params": params}))
                while (message := json.loads(ws.recv(timeout=60))).get("id") != number:
                    pass
                return message["result"]

            def evaluate(expression: str):
                return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            def wait_for(expression: str, what: str) -> None:
                give_up = time.monotonic() + 90
                while not evaluate(expression):
                    assert time.monotonic() < give_up, f"the page never showed {what}"
                    time.sleep(1)

            call("Page.navigate", url=url)
            click = (f"(() => {{ const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === "
                     f"{json.dumps(button)}); if (b) b.click(); return !!b; }})()")
            wait_for(click, f"a {button!r} button")
            wait_for(f"document.body.innerText.includes({json.dumps(until)})", repr(until))
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
            return evaluate("document.documentElement.outerHTML")
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


def chromium(url: str, *, screenshot: str | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot if asked)."""
    profile = tempfile.mkdtemp(prefix="horse-chromium-")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--run-all-compositor-stages-before-draw", "--virtual-time-budget=30000", "--window-size=1400,1000"]
    if screenshot:  # one browser does both, after the same virtual-time budget (a launch is a few CPU-s)
        args.append(f"--screenshot={screenshot}")
    try:
        return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def horse_ui(tmp_path):
    """`horse ui` on a free port with its own Prefect database."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    with ctrl_c_reaches_children():  # the test stops it with Ctrl-C
        process = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240  # a first start migrates a new database: slow on 2 busy cores
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json() is True:
                break
        except (httpx.HTTPError, ValueError):
            time.sleep(0.5)
    else:
        _stop(process)
        pytest.fail(f"horse ui did not come up: {process.stdout.read()}")
    yield f"http://127.0.0.1:{port}", process
    _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, which `horse ui` passes on to its Prefect server (SIGKILL would leave it running)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
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
    # social's master is an .mp4 (AAC), broadcast-eu's a .mov (24-bit PCM)
    assert all(store.blob_exists(r["master_sha256"], r["master_uri"].rsplit(".", 1)[1]) for r in first["qc"].values())
    assert first["qc"]["broadcast-eu"]["master_uri"].endswith(".mov")
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

    check_review_form(base_url, env, tmp_path, artifacts_dir)

    ui_process.send_signal(signal.SIGINT)
    assert ui_process.wait(timeout=60) == 0, "horse ui stops cleanly on Ctrl-C"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base_url}/api/health", timeout=2)


def check_review_form(base_url: str, env: dict, store_dir, artifacts_dir) -> None:
    """The review flow on the demo's campaign pauses; in the browser its run page's Resume opens the
    typed review form (a choice and a note per shot and variant), and its review artifact shows the
    contact sheet. Resumed through the API with nothing decided, it ends."""
    review = subprocess.Popen([sys.executable, "-c", "import sys; from flows.review import review_campaign; "
                               "review_campaign('aurora-tea-launch', store_url=sys.argv[1], timeout_s=600)",
                               str(store_dir / "horse-store")], env=env, cwd=store_dir, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (paused := httpx.post(f"{base_url}/api/flow_runs/filter", json={
                "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).json()):
            assert review.poll() is None and time.monotonic() < deadline, "the review flow did not pause"
            time.sleep(1)
        run_id = paused[0]["id"]
        form = chromium_clicking(f"{base_url}/runs/flow-run/{run_id}", "Resume", "Reviewer",
                                 str(artifacts_dir / "ui-review-form.png"))
        for text in ("Reviewer", "s010-kitchen-hello · en-16x9", "s010-kitchen-hello · en-16x9 note", "awaiting"):
            assert text in form, f"the review form shows {text!r}"

        reviews = httpx.post(f"{base_url}/api/artifacts/filter",
                             json={"artifacts": {"key": {"any_": ["aurora-tea-launch-review"]}}}).json()
        assert reviews, "the review step published its artifact"
        page = chromium(f"{base_url}/artifacts/artifact/{reviews[0]['id']}", screenshot=str(artifacts_dir / "ui-review.png"))
        assert "Review aurora-tea-launch version" in page and "Contact sheet" in page
        assert 'src="data:image/jpeg;base64,' in page, "the contact sheet and posters are shown"

        resumed = httpx.post(f"{base_url}/api/flow_runs/{run_id}/resume", json={"run_input": {"reviewer": "ci"}},
                             timeout=60)
        assert resumed.json()["status"] == "ACCEPT", resumed.text
        assert review.wait(timeout=300) == 0, review.stdout.read()[-3000:]
    finally:
        if review.poll() is None:
            review.kill()
