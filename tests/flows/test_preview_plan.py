"""Planning previews and promotes as plain functions (no Ray, no Prefect): a preview is a 256p
render of its take, a promote plans the take exactly as a straight render of the target tier, and
a promote that cannot happen is refused with a one-line reason."""

from __future__ import annotations

import pytest

from catalog import Store
from flows.manifest import read_manifest, write_manifest
from flows.plan import Filters, expand_shot, make_plan, model_info
from flows.promote import PromoteError, chosen_previews, run_promote
from flows.settings import load_settings

from .conftest import shot


@pytest.fixture
def takes(tmp_path):
    rows = [shot("h100", "A horse at dawn.", languages=["en"], aspect_ratios=["16:9"], resolution="1080p", takes=2,
                 preview=True),
            shot("h200", "A horse at dusk.", languages=["en"], aspect_ratios=["16:9"], resolution="1080p", takes=1)]
    return read_manifest(str(write_manifest(rows, tmp_path / "takes.parquet"))).shots


def test_previews_are_256p_renders_of_their_takes_and_promotes_are_straight_renders(takes, tmp_store):
    model = model_info(load_settings(store_url=tmp_store))
    store = Store(tmp_store)
    by_column = make_plan(takes, model, store).jobs
    assert [(j.shot_id, j.variant, j.resolution, j.role) for j in by_column] == [
        ("h100", "en-16x9-t1-preview", "256p", "preview"), ("h100", "en-16x9-t2-preview", "256p", "preview"),
        ("h200", "en-16x9-t1", "1080p", None)], "the manifest's preview column chooses previews per row"
    everything = make_plan(takes, model, store, Filters(preview=True)).jobs
    assert {j.role for j in everything} == {"preview"}, "the run parameter makes every take a preview"

    # a preview has the render key of a 256p render of the same take: the same clip
    plain_256p = expand_shot(takes[0].model_copy(update={"resolution": "256p", "preview": False}), model)
    assert [j.render_key for j in by_column[:2]] == [j.render_key for j in plain_256p]
    assert by_column[0].entry()["role"] == "preview" and "role" not in plain_256p[0].entry()

    # a promote plans the take exactly as a straight render of the target tier
    promoted = make_plan(takes, model, store, Filters(resolution="1080p", preview=False, shot_ids=("h100",))).jobs
    straight = expand_shot(takes[0].model_copy(update={"preview": False}), model)
    assert [(j.variant, j.render_key, j.seed) for j in promoted] == [(j.variant, j.render_key, j.seed) for j in straight]


def test_the_chosen_previews_are_rendered_preview_entries():
    entry = {"shot_id": "h100", "render_key": "a" * 64, "blob_uri": "file:///s/blobs/x.mp4", "sha256": "b" * 64,
             "status": "ok", "role": "preview", "stage_key": "c" * 64}
    entries = [{**entry, "variant": "en-16x9-t1-preview"}, {**entry, "variant": "en-16x9-t2-preview"},
               {**entry, "variant": "en-16x9-t3-preview", "status": "failed"},
               {**entry, "variant": "en-16x9-t1", "role": None}, {**entry, "shot_id": "h200", "variant": "en-16x9-t1-preview"}]
    assert set(chosen_previews(entries, None, None)) == {("h100", "en-16x9-t1"), ("h100", "en-16x9-t2"),
                                                         ("h200", "en-16x9-t1")}
    chosen = chosen_previews(entries, ["h100"], ["en-16x9-t2-preview", "en-16x9-t3"])
    assert chosen == {("h100", "en-16x9-t2"): {"render_key": "a" * 64, "variant": "en-16x9-t2-preview",
                                               "blob_uri": "file:///s/blobs/x.mp4", "sha256": "b" * 64,
                                               "stage_key": "c" * 64}}


def test_a_promote_that_cannot_happen_says_why(tmp_store):
    settings = load_settings(store_url=tmp_store)
    with pytest.raises(PromoteError, match="to: promote to one of 540p, 1080p, got '4k'"):
        run_promote("spring-launch", "4k", settings)
    with pytest.raises(PromoteError, match="campaign 'spring-launch' has no published version"):
        run_promote("spring-launch", "1080p", settings)
    Store(tmp_store).versions.publish("spring-launch", [])
    with pytest.raises(PromoteError, match="version 1 has no rendered preview takes matching shots .*--preview"):
        run_promote("spring-launch", "1080p", settings, shot_ids=["h100"])
