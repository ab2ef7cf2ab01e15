"""The spend table's API rows carry the provider's usage: tokens it reported, or the estimate
where it reports none (fal), summed per run, campaign and provider, written and read back."""

from __future__ import annotations

from types import SimpleNamespace

from catalog import Store
from flows.budget import BudgetGuard
from flows.settings import load_settings


def test_api_spend_rows_sum_reported_and_estimated_tokens_per_provider(tmp_store):
    guard = BudgetGuard([], SimpleNamespace(job_seconds={}), [])
    guard.provider_billed("spring", "seedance-2.0", 0.2, {"completion_tokens": 100, "total_tokens": 100})
    guard.provider_billed("spring", "seedance-2.0", None, {"completion_tokens": 50, "total_tokens": 50})
    guard.provider_billed("spring", "seedance-2.0-fal", 0.5, {"estimated_tokens": 70, "inference_time_s": 1.25})
    guard.provider_billed("autumn", "seedance-2.0", 0.3, {"total_tokens": 30})
    guard.provider_billed("autumn", "seedance-2.0", 0.1, {"completion_tokens": 20})  # ModelArk's documented field
    rows = guard.rows("run-1", load_settings(store_url=tmp_store))
    store = Store(tmp_store)
    store.spend.record(rows, run_id="run-1")

    got = {(r["campaign_id"], r["device_type"]): (r["renders"], r["money"], r["usage_tokens"], r["estimated_tokens"])
           for r in store.spend.to_arrow(run_id="run-1").to_pylist()}
    assert got == {("autumn", "api:seedance-2.0"): (2, 0.4, 50, None),
                   ("spring", "api:seedance-2.0"): (2, None, 150, None),  # one clip unpriced: no total
                   ("spring", "api:seedance-2.0-fal"): (1, 0.5, None, 70)}
