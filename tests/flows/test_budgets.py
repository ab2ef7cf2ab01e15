"""Budgets: limits from settings and the spend table, the check before a run, the guard that stops
dispatching while it runs, and a run that stops at its budget and is resumed (Prefect test server,
local Ray, tiny model)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import yaml

from catalog import Store
from flows.budget import BudgetGuard, budgets_for, over_budget, price_per_gpu_hour
from flows.cost import cost_model, quote_plan
from flows.manifest import validate_rows, write_manifest
from flows.plan import ModelInfo, make_plan
from flows.routing import Routes
from flows.settings import ConfigError, load_settings
from horse_actors import RenderJob, RenderOutcome
from horse_actors.api_actor import ProviderActors
from horse_actors.backends.api import ApiRenderOutcome
from horse_actors.config import Scheduling
from horse_actors.jobs import CANCELLED, NOT_ADMITTED

from .conftest import shot

H100 = "NVIDIA H100 80GB HBM3"
MODEL = ModelInfo("f" * 64, "distill", lambda resolution, aspect: (1920, 1088))


def quoted_plan(store: Store, settings, campaigns=("spring", "autumn"), shots=2):
    rows = [shot(f"s{i}", f"A kettle, {c} {i}.", campaign_id=c, languages=["en"], aspect_ratios=["16:9"], resolution="1080p",
                 duration_s=5.0) for c in campaigns for i in range(shots)]
    plan = make_plan(validate_rows(rows)[0], MODEL, store)
    return plan, quote_plan(plan, cost_model(store, settings, MODEL.fingerprint, H100))


def test_prices_by_device_name_and_money_budgets_need_one(tmp_store):
    assert price_per_gpu_hour({"H100": 2.5, "H100 80GB": 3.0, "cpu": 0.0}, H100) == 3.0, "the longest key that fits"
    assert price_per_gpu_hour({"h100": 2.5}, H100) == 2.5 and price_per_gpu_hour({"A100": 1.0}, H100) is None
    settings = load_settings(store_url=tmp_store, budget={"run": {"money": 10}})
    with pytest.raises(ConfigError, match="run budget of 10 USD: cost.price_per_gpu_hour has no price for device type "
                                          "NVIDIA H100 80GB HBM3"):
        budgets_for(settings, [], H100, {})


def test_a_quote_over_a_run_or_campaign_budget_is_named_with_the_quote(tmp_store):
    store = Store(tmp_store)
    settings = load_settings(store_url=tmp_store, cost={"price_per_gpu_hour": {"H100": 3.6}},
                             budget={"run": {"gpu_hours": 1.0}, "campaign": {"money": 1000},
                                     "campaigns": {"autumn": {"money": 0.2}}})
    plan, quote = quoted_plan(store, settings)
    assert quote.gpu_seconds == pytest.approx(4 * 43.4)  # four 5 s 1080p clips at the configured H100 figures
    spent = {"spring": {"gpu_seconds": 100.0, "money": 999.95}}
    budgets = budgets_for(settings, sorted(quote.by_campaign), H100, spent)
    assert [str(b) for b in budgets] == [
        "run budget of 1 GPU-hours", "campaign autumn budget of 0.20 USD",
        "campaign spring budget of 1000.00 USD, 999.95 USD spent before"]
    # autumn: 86.8 GPU-s at 3.6/hour = 0.09 (fits 0.20); spring: 999.95 + 0.09 > 1000
    assert over_budget(budgets, quote) == [
        "over budget: campaign spring budget of 1000.00 USD, 999.95 USD spent before; the quote is 0.09 USD"]


def outcome(job, seconds: float, status="ok", device_type=H100, error_class=None) -> RenderOutcome:
    return RenderOutcome(job.render_key, status, device_type=device_type, error_class=error_class,
                         device_seconds={"base": seconds} if seconds else {})


def test_the_guard_admits_while_spent_plus_running_plus_next_stays_within_every_budget(tmp_store):
    store = Store(tmp_store)
    settings = load_settings(store_url=tmp_store, cost={"price_per_gpu_hour": {"H100": 36.0}},
                             budget={"run": {"gpu_hours": 150 / 3600}, "campaigns": {"autumn": {"money": 0.5}}})
    plan, quote = quoted_plan(store, settings)  # 43.4 GPU-s per job
    budgets = budgets_for(settings, sorted(quote.by_campaign), H100, {})
    guard = BudgetGuard(budgets, quote, plan.todo)
    jobs = {(job.campaign_id, job.shot_id): RenderJob(job.render_key, None, job.campaign_id, job.shot_id, job.variant)
            for job in plan.todo}
    assert guard.admit(jobs["spring", "s0"]) and guard.admit(jobs["spring", "s1"])  # 86.8 on the actors
    guard.settle(outcome(jobs["spring", "s0"], 70.0))  # it cost more than quoted: 70 spent + 43.4 running
    assert guard.admit(jobs["autumn", "s0"]) is False, "70 + 43.4 + 43.4 > 150"
    assert guard.stopped_by is budgets[0] and guard.reason == "not rendered: budget (run budget of 0.0417 GPU-hours)"

    autumn = BudgetGuard(budgets, quote, plan.todo)
    # autumn's money: 43.4 GPU-s at 36/hour = 0.434 each; the second would pass 0.5
    assert autumn.admit(jobs["autumn", "s0"]) and not autumn.admit(jobs["autumn", "s1"])
    assert autumn.stopped_by is budgets[1]

    guard.settle(outcome(jobs["spring", "s1"], 40.0))
    guard.settle(outcome(jobs["autumn", "s0"], 0, status=CANCELLED, error_class=NOT_ADMITTED))
    guard.settle(outcome(jobs["autumn", "s1"], 0, status=CANCELLED, error_class=NOT_ADMITTED))
    assert guard.gpu_seconds == 110.0
    assert guard.rows("run-1", settings) == [
        {"run_id": "run-1", "campaign_id": "autumn", "device_type": None, "gpu_seconds": 0.0, "money": None,
         "currency": "USD", "renders": 0, "not_rendered_budget": 2},
        {"run_id": "run-1", "campaign_id": "spring", "device_type": H100, "gpu_seconds": 110.0, "money": 1.1,
         "currency": "USD", "renders": 2, "not_rendered_budget": 0}]
    store.spend.record(guard.rows("run-1", settings), run_id="run-1")
    assert store.spend.by_campaign() == {"autumn": {"gpu_seconds": 0.0, "money": 0.0},
                                         "spring": {"gpu_seconds": 110.0, "money": 1.1}}


def test_the_guard_holds_the_quoted_price_of_api_clips_and_settles_to_the_bill(tmp_store):
    store = Store(tmp_store)
    rows = [shot(f"s{i}", f"A kettle {i}.", campaign_id="spring", languages=["en"], aspect_ratios=["16:9"],
                 backend="seedance-2.0") for i in range(4)]
    routes = Routes.from_settings(load_settings().routing)  # seedance-2.0: 0.93 USD a clip
    plan = make_plan(validate_rows(rows)[0], MODEL, store, routes=routes)
    quote = quote_plan(plan, cost_model(store, load_settings(store_url=tmp_store), MODEL.fingerprint, H100))
    settings = load_settings(store_url=tmp_store, cost={"price_per_gpu_hour": {"H100": 3.6}},
                             budget={"run": {"money": 2.5, "gpu_hours": 1e-9}})
    budgets = budgets_for(settings, ["spring"], H100, {})
    guard = BudgetGuard(budgets, quote, plan.todo, routes)
    jobs = [RenderJob(job.render_key, job.api_request, job.campaign_id, job.shot_id, job.variant) for job in plan.todo]
    assert guard.admit(jobs[0]) and guard.admit(jobs[1]), "API clips take no GPU time: a GPU-hours budget of nothing holds them"
    assert not guard.admit(jobs[2]), "1.86 USD held + 0.93 > 2.5"
    assert guard.stopped_by is budgets[1] and "run budget of 2.50 USD" in guard.reason

    def billed(job, cost_usd, status="ok"):
        return ApiRenderOutcome(job.render_key, status, provider="seedance-2.0", cost_usd=cost_usd)

    guard.settle(billed(jobs[0], 0.40))  # billed less than quoted: 0.40 spent + 0.93 held
    assert guard.admit(jobs[2]), "0.40 + 0.93 + 0.93 <= 2.5"
    guard.settle(billed(jobs[1], None, status="failed"))  # no clip, no bill: its hold is released
    guard.settle(billed(jobs[2], None))  # delivered, bill unknown: the quoted price stays spent
    assert guard.admit(jobs[3]) and not guard.admit(jobs[3]), "1.33 + 0.93 fits 2.5, 1.33 + 0.93 + 0.93 does not"
    assert [r for r in guard.rows("run-1", settings) if r["device_type"] == "api:seedance-2.0"] == [
        {"run_id": "run-1", "campaign_id": "spring", "device_type": "api:seedance-2.0", "gpu_seconds": 0.0,
         "money": 1.33, "currency": "USD", "renders": 2, "not_rendered_budget": 0, "usage_tokens": None,
         "estimated_tokens": None}]

    euro = budgets_for(load_settings(cost={"currency": "EUR", "price_per_gpu_hour": {"H100": 3.6}},
                                     budget={"campaign": {"money": 10}}), ["spring"], H100, {})
    with pytest.raises(ConfigError, match="campaign spring budget of 10.00 EUR: API providers bill in USD"):
        BudgetGuard(euro, quote, plan.todo, routes)
    unpriced = Routes.from_settings(load_settings(routing={"default": "seedance-2.0-fal"}).routing)
    fal = make_plan(validate_rows([{**row, "backend": None} for row in rows])[0], MODEL, store, routes=unpriced)
    with pytest.raises(ConfigError, match="run budget of 2.50 USD: backend seedance-2.0-fal has no price"):
        BudgetGuard(budgets, quote, fal.todo, unpriced)


def test_plan_warns_and_render_refuses_when_api_clips_money_passes_a_budget(tmp_path, tmp_store):
    """The check before a run holds the API clips' quoted USD against money budgets, as the
    dispatch guard does: `horse plan`'s warnings (dry_run) and `horse render`'s refusal."""
    from flows.budget import OverBudget
    from flows.campaign_run import quote_and_check_budgets
    from flows.dry_run import dry_run

    rows = [shot("s0", "A kettle.", campaign_id="spring", languages=["en"], aspect_ratios=["16:9"])]
    rows += [shot(f"a{i}", f"A kettle {i}.", campaign_id="autumn", languages=["en"], aspect_ratios=["16:9"],
                  backend="seedance-2.0") for i in range(3)]  # 0.93 USD a clip: 2.79 USD, all in autumn
    settings = load_settings(store_url=tmp_store, cost={"price_per_gpu_hour": {"cpu": 3.6}},
                             budget={"run": {"money": 2.5, "gpu_hours": 1.0}, "campaign": {"money": 2.0}})
    document = dry_run(str(write_manifest(rows, tmp_path / "m.parquet")), settings, device_type="cpu")
    assert [w.split("; the quote is")[0] for w in document["warnings"]] == [
        "over budget: run budget of 2.50 USD", "over budget: campaign autumn budget of 2.00 USD"]
    assert document["warnings"][1] == ("over budget: campaign autumn budget of 2.00 USD; the quote is 2.79 USD "
                                       "(2.79 USD of it API clips)"), "a campaign with only API clips has its budget"
    budgets = {b["budget"]: b for b in document["budgets"]}
    assert budgets["campaign autumn budget"]["quote"] == pytest.approx(2.79) and budgets["run budget"]["over"]
    assert not budgets["campaign spring budget"]["over"]
    no_gpu_price = load_settings(budget={"run": {"money": 3.0}, "campaign": {"money": 2.0}})
    assert [str(b) for b in budgets_for(no_gpu_price, ["autumn"], H100, {}, api_only=["autumn"])] == [
        "run budget of 3.00 USD", "campaign autumn budget of 2.00 USD"], "API clips need no GPU price"

    routes = Routes.from_settings(settings.routing)
    plan = make_plan(validate_rows(rows)[0], MODEL, Store(tmp_store), routes=routes)
    with pytest.raises(OverBudget, match=r"over budget: run budget of 2.50 USD; the quote is 2\.[78]\d USD "
                                         r"\(2.79 USD of it API clips\)"):
        quote_and_check_budgets(plan, settings, False, routes)


def test_provider_actors_ask_the_guard_first_and_after_its_no_dispatch_nothing(tmp_store):
    """The provider scheduler's side (no Ray needed: no job is admitted, so no actor starts)."""
    store = Store(tmp_store)
    rows = [shot(f"s{i}", f"A kettle {i}.", campaign_id="spring", languages=["en"], aspect_ratios=["16:9"],
                 backend="seedance-2.0") for i in range(3)]
    routes = Routes.from_settings(load_settings().routing)
    plan = make_plan(validate_rows(rows)[0], MODEL, store, routes=routes)
    settings = load_settings(store_url=tmp_store, cost={"price_per_gpu_hour": {"H100": 3.6}},
                             budget={"run": {"money": 0.5}})  # under one 0.93 USD clip
    guard = BudgetGuard(budgets_for(settings, ["spring"], H100, {}), quote_plan(plan, cost_model(
        store, settings, MODEL.fingerprint, H100)), plan.todo, routes)
    jobs = [RenderJob(job.render_key, job.api_request, job.campaign_id, job.shot_id, job.variant) for job in plan.todo]
    asked, outcomes = [], []

    def admit(job):
        asked.append(job.render_key)
        return guard.admit(job)

    def arrived(outcome):
        outcomes.append(outcome)
        guard.settle(outcome)

    with ProviderActors(routes.providers, None, Scheduling()) as actors:
        actors.run(jobs, arrived, threading.Event(), admit)
    assert asked == [jobs[0].render_key], "asked before the first dispatch, and not again after its no"
    assert [(o.render_key, o.error_class) for o in outcomes] == [(j.render_key, NOT_ADMITTED) for j in jobs]
    assert guard.not_rendered == {"spring": 3} and "run budget of 0.50 USD" in guard.reason


# ---- a run that stops at its budget -------------------------------------------------------------


def config(tmp_path: Path, **sections) -> str:
    """One CPU actor with two jobs in flight; every 1 s 256p clip quoted at 100 GPU-s (no history)."""
    settings = {"ray": {"cpu_mode": True, "num_actors": 1, "max_in_flight_per_actor": 2, "job_deadline_s": 300},
                "render": {"chunk_size": 2},
                "cost": {"configured": {"clip_seconds": 1.0,
                                        "seconds": {"base": 100.0, "decode_256p": 0.0, "encode_256p": 0.0}}},
                **sections}
    path = tmp_path / f"horse-{len(list(tmp_path.glob('horse-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def spend_artifact(flow_run_id) -> list[dict]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    [artifact] = [a for a in asyncio.run(read()) if a.key and a.key.endswith("-spend")]
    return json.loads(artifact.data)


@pytest.mark.slow
def test_a_run_stops_at_its_budget_publishes_what_it_has_and_a_rerun_renders_the_rest(
        prefect_api, ray_cluster, tmp_path, tmp_store):
    from flows.budget import OverBudget
    from flows.nightly import nightly_campaign_render

    rows = [shot(f"s{i}", f"Shot {i}: rain on a tin roof.", languages=["en"], aspect_ratios=["16:9"], priority=i)
            for i in range(4)]
    manifest = str(write_manifest(rows, tmp_path / "m.parquet"))
    budget = config(tmp_path, budget={"run": {"gpu_hours": 150 / 3600}})

    with pytest.raises(OverBudget, match=r"over budget: run budget of 0.0417 GPU-hours; the quote is 0.111 GPU-hours"):
        nightly_campaign_render(manifest, store_url=tmp_store, config_file=budget)
    store = Store(tmp_store)
    assert store.versions.latest("spring-launch") is None and store.spend.to_arrow().num_rows == 0

    state = nightly_campaign_render(manifest, store_url=tmp_store, config_file=budget, allow_over_budget=True,
                                    return_state=True)
    first = state.result()
    # The first job (priority 3) fits (100 <= 150); the second would not (200): no new job after it.
    assert (first["rendered"], first["not_rendered_budget"], first["failed"], first["cancelled"]) == (1, 3, 0, 0)
    assert first["budget_stop"] == "not rendered: budget (run budget of 0.0417 GPU-hours)"
    entries = {e["shot_id"]: e for e in store.versions.read("spring-launch", 1)["entries"]}
    assert entries["s3"]["status"] == "ok" and store.blob_exists(entries["s3"]["sha256"])
    for shot_id in ("s0", "s1", "s2"):
        assert entries[shot_id]["status"] == "failed" and entries[shot_id]["blob_uri"] is None
        assert entries[shot_id]["error_class"] == "NotRendered" and entries[shot_id]["error_message"] == first["budget_stop"]
    blobs = list(Path(tmp_store.removeprefix("file://"), "blobs").rglob("*.mp4"))
    receipts = list(Path(tmp_store.removeprefix("file://"), "receipts").rglob("*.json"))
    assert len(blobs) == 1 and len(receipts) == 1, "nothing half-written for the shots left out"
    [row] = store.spend.to_arrow(run_id=first["run_id"]).to_pylist()
    assert row["campaign_id"] == "spring-launch" and row["device_type"] == "cpu" and row["renders"] == 1
    assert row["gpu_seconds"] > 0 and row["not_rendered_budget"] == 3
    [artifact] = spend_artifact(state.state_details.flow_run_id)
    assert artifact["campaign"] == "spring-launch" and artifact["not_rendered_budget"] == 3
    assert artifact["gpu_hours"] == round(row["gpu_seconds"] / 3600, 4)

    rest = nightly_campaign_render(manifest, store_url=tmp_store, config_file=config(tmp_path))
    assert (rest["rendered"], rest["cached"], rest["not_rendered_budget"]) == (3, 1, 0), "only the rest"
    assert all(e["status"] == "ok" for e in store.versions.read("spring-launch", 2)["entries"])
    assert store.spend.totals(campaign_id="spring-launch")["gpu_seconds"] > row["gpu_seconds"]
