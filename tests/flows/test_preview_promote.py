"""Preview -> promote end to end (tiny model, real Ray, Prefect test server, real catalog on a local
folder and on moto S3): previews of 3 takes keep their base latents; `horse promote` finishes take 2
at 1080p from its latent, bit-identical to a straight 1080p render of that take, and take 3, whose
latent is gone, with its base stage rendered again and a notice that says so; the new version lists
each promoted clip beside its preview, with lineage from one to the other; `horse gc` keeps what a
promoted clip needs."""

from __future__ import annotations

import hashlib
import json

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from catalog import Store
from catalog.lineage import dataset_name
from catalog.stage_results import record_key
from flows.destinations import run_destinations
from flows.manifest import read_manifest, write_manifest
from flows.plan import Filters, make_plan, model_info
from flows.render_stream import to_render_job
from flows.settings import load_settings
from model import HappyHorsePipeline, StageResult

from ..cli.cli_testlib import horse as horse_process, one_json_document
from .conftest import shot

pytestmark = pytest.mark.slow


@pytest.fixture(params=["local", "s3"])
def config(request, tmp_path):
    """(config file, store url, storage options) of a fresh store on each backend."""
    if request.param == "local":
        url, options, yaml_options = str(tmp_path / "store"), None, "{}"
    else:
        s3 = request.getfixturevalue("s3_server")
        url, options = f"s3://{s3['bucket']}/promote-{tmp_path.name}", s3["storage_options"]
        yaml_options = f"{{client_kwargs: {{endpoint_url: '{s3['endpoint_url']}', region_name: us-east-1}}}}"
    path = tmp_path / "horse.yaml"
    path.write_text(f"store_url: {url}\nstorage_options: {yaml_options}\n"
                    "ray: {cpu_mode: true, num_actors: 1, job_deadline_s: 300}\n")
    return str(path), url, options


def horse(*args: str):
    """`horse ARGS` in this process (it renders on the session's Ray cluster), human output."""
    from flows.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_preview_three_takes_promote_two_and_collect_garbage(prefect_api, ray_cluster, config, tmp_path):
    from flows.nightly import nightly_campaign_render

    config_file, url, options = config
    manifest = write_manifest([shot("h100", "A horse trots along a beach at dawn.", languages=["en"],
                                    aspect_ratios=["16:9"], resolution="1080p", takes=3)], tmp_path / "takes.parquet")
    store = Store(url, options)

    previews = nightly_campaign_render(str(manifest), config_file=config_file, preview=True)
    assert (previews["rendered"], previews["failed"]) == (3, 0)
    v1 = {e["variant"]: e for e in store.versions.read("spring-launch", 1)["entries"]}
    assert sorted(v1) == ["en-16x9-t1-preview", "en-16x9-t2-preview", "en-16x9-t3-preview"]
    assert {(e["role"], e["resolution"], e["status"]) for e in v1.values()} == {("preview", "256p", "ok")}
    latents = store.stage_results.existing(e["stage_key"] for e in v1.values())
    assert len(latents) == 3 and {r.retention for r in latents.values()} == {"preview"}

    gone = latents[v1["en-16x9-t3-preview"]["stage_key"]]  # as if GC had collected take 3's latent
    store.root.delete(record_key(gone.stage_key))
    store.root.delete(store.blobs.key_from(gone.blob_uri))

    result = horse("promote", "spring-launch", "--to", "1080p", "--variants", "en-16x9-t2,en-16x9-t3-preview",
                   "--destinations", "social", "--config", config_file)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "notice: spring-launch/h100 en-16x9-t3: the base latent of en-16x9-t3-preview is gone" in output
    assert "rendering its base stage again" in output
    assert "rendered again" in output, "the promoted table says which latent was gone"

    v2 = {e["variant"]: e for e in store.versions.read("spring-launch", 2)["entries"]}
    assert sorted(v2) == ["en-16x9-t1-preview", "en-16x9-t2", "en-16x9-t2-preview", "en-16x9-t3",
                          "en-16x9-t3-preview"], "each promoted clip beside its preview"
    t2, t3 = v2["en-16x9-t2"], v2["en-16x9-t3"]
    t2_latent = latents[v1["en-16x9-t2-preview"]["stage_key"]]
    assert (t2["role"], t2["resolution"], t2["status"], t2["base_rerendered"]) == ("promoted", "1080p", "ok", False)
    assert t2["promoted_from"] == {"render_key": v1["en-16x9-t2-preview"]["render_key"], "variant": "en-16x9-t2-preview",
                                   "blob_uri": v1["en-16x9-t2-preview"]["blob_uri"],
                                   "sha256": v1["en-16x9-t2-preview"]["sha256"], "stage_key": t2_latent.stage_key,
                                   "stage_result_uri": t2_latent.blob_uri, "stage_result_sha256": t2_latent.sha256}
    assert (t3["status"], t3["base_rerendered"]) == ("ok", True) and "stage_result_uri" not in t3["promoted_from"]
    # a promoted clip gets delivery QC and a master like any other render (its previews had none)
    for promoted in (t2, t3):
        assert set(promoted["qc"]) == {"social"} and promoted["qc_status"] in ("passed", "failed")
        assert store.blob_exists(promoted["qc"]["social"]["master_sha256"], "mp4")
    assert "qc" not in v2["en-16x9-t2-preview"]
    assert json.loads(store.read_receipt(t2["render_key"])["extra"])["stages_run"] == {"1": ["sr", "decode"]}
    assert json.loads(store.read_receipt(t3["render_key"])["extra"])["stages_run"] == {"1": ["base", "sr", "decode"]}

    [event] = [e for e in store.lineage.read_events() if e.eventType.value == "COMPLETE" and e.job.name == "render_shot"
               and any(t.key == "render_key" and t.value == t2["render_key"] for t in e.run.facets["tags"].tags)]
    inputs = {(i.namespace, i.name) for i in event.inputs}
    assert {dataset_name(t2_latent.blob_uri), dataset_name(t2["promoted_from"]["blob_uri"])} <= inputs

    # A straight 1080p render of take 2 has the same render key, and its final (sr) latent is
    # byte-identical to the one the promote decoded; that latent decodes to the straight render's
    # frames and audio. (libx264 is not deterministic here, so two encodes of one clip can differ:
    # the latents and the decoded clip are what is compared.)
    settings = load_settings(config_file, render={"destinations": ["social"]})
    model = model_info(settings)
    [job] = [j for j in make_plan(read_manifest(str(manifest)).shots, model, store,
                                  Filters(resolution="1080p", preview=False), run_destinations(settings)).jobs
             if j.variant == "en-16x9-t2"]
    assert job.render_key == t2["render_key"]
    request = to_render_job(job, model.fingerprint).request
    promoted_sr = json.loads(store.read_receipt(t2["render_key"])["extra"])["stage_results"]["sr"]
    pipe = HappyHorsePipeline.tiny()
    assert hashlib.sha256(pipe.render_until(request, "sr").to_bytes()).hexdigest() == promoted_sr["sha256"]
    [record] = store.stage_results.existing([promoted_sr["stage_key"]]).values()
    finished, straight = pipe(request, start=StageResult.from_bytes(store.stage_results.load(record))), pipe(request)
    assert np.array_equal(finished.frames, straight.frames) and np.array_equal(finished.audio, straight.audio)
    with store.open_blob(t2["blob_uri"]) as f, av.open(f) as box:
        stream = box.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height, stream.frames) == (224, 128, 25)

    # GC with no retention left: the promoted clip's latent stays with its version, the rest goes
    no_retention = tmp_path / "gc.yaml"
    no_retention.write_text(open(config_file).read() + "gc: {grace_hours: 0, preview_latent_days: 0, stage_result_hours: 0}\n")
    dry = horse_process("gc", "--dry-run", "--json", "--config", str(no_retention))
    assert dry.returncode == 0, dry.stderr
    report = one_json_document(dry)
    assert report["by_kind"]["stage results"]["deleted_files"] == report["by_kind"]["stage results"]["files"] - 1
    assert {"clips", "posters", "contact sheets", "manifests", "masters"} <= set(report["by_kind"])
    assert all(report["by_kind"][k]["deleted_files"] == 0 for k in ("clips", "posters", "manifests", "masters"))
    assert len(store.stage_results.records()) == len(report["expired_stage_results"]) + 1, "a dry run deletes nothing"

    real = horse("gc", "--config", str(no_retention))
    assert real.exit_code == 0 and "stage results" in real.output, real.output
    [kept] = store.stage_results.records()
    assert kept.blob_uri == t2_latent.blob_uri and store.stage_results.load(kept) is not None
    for entry in v2.values():
        with store.open_blob(entry["blob_uri"]) as f:
            assert f.read(8)
