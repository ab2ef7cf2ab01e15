"""Budgets: spend limits in GPU-hours or money, held against a plan's quote before a run starts and
against what the run spends while it renders (DESIGN §12 "cost model, budgets, priorities").

A run has its own budget (`budget.run`; `horse plan/render --budget-...`) and each campaign one
over all its runs (`budget.campaigns.<id>`, else `budget.campaign`), whose earlier spend is read
from the spend table. Money goes through `cost.price_per_gpu_hour` of the device type.

While a run renders, `BudgetGuard.admit` is asked before each dispatch: a shot is admitted only
if what is spent, what is on the actors (at their quotes) and its own quote stay within every
budget. After the first no the pool takes no new shot; the shots on actors finish (never a
half-written shot) and the rest are "not rendered: budget": a rerun renders exactly those.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from flows.cost import Quote
from flows.plan import PlannedJob
from flows.settings import ConfigError, HorseSettings
from horse_actors import RenderJob, RenderOutcome
from horse_actors.backends.spec import billed_tokens
from horse_actors.jobs import CANCELLED, NOT_ADMITTED

class OverBudget(ValueError):
    """A quote over a budget, for a run started without allow_over_budget."""


def price_per_gpu_hour(prices: dict[str, float], device_type: str | None) -> float | None:
    """The configured price for `device_type`: its own key, else the longest key its name contains
    (case-insensitive: `H100` prices "NVIDIA H100 80GB HBM3"); None if none fits."""
    if device_type is None:
        return None
    if device_type in prices:
        return prices[device_type]
    fitting = [key for key in prices if key.lower() in device_type.lower()]
    return prices[max(fitting, key=len)] if fitting else None


@dataclass(frozen=True)
class Budget:
    """One limit in its unit (GPU-hours or a currency) for the run or one campaign."""

    name: str  # "run budget", "campaign spring-launch budget"
    campaign_id: str | None  # None: the whole run
    unit: str
    limit: float
    spent_before: float  # in `unit`: earlier runs of the campaign (the spend table); 0 for the run
    per_gpu_second: float  # `unit` per device-second

    def spend(self, gpu_seconds: float) -> float:
        """What spending `gpu_seconds` more brings this budget's spend to."""
        return self.spent_before + gpu_seconds * self.per_gpu_second

    def amount(self, value: float) -> str:
        return f"{value:.3g} GPU-hours" if self.unit == "GPU-hours" else f"{value:.2f} {self.unit}"

    def __str__(self) -> str:
        spent = f", {self.amount(self.spent_before)} spent before" if self.spent_before else ""
        return f"{self.name} of {self.amount(self.limit)}{spent}"

    def as_dict(self, gpu_seconds: float | None = None) -> dict[str, Any]:
        out = {"budget": self.name, "campaign_id": self.campaign_id, "unit": self.unit, "limit": self.limit,
               "spent_before": round(self.spent_before, 4)}
        if gpu_seconds is not None:
            out |= {"quote": round(gpu_seconds * self.per_gpu_second, 4), "over": self.spend(gpu_seconds) > self.limit}
        return out


def budgets_for(settings: HorseSettings, campaigns: list[str], device_type: str | None,
                spent: dict[str, dict[str, float]]) -> list[Budget]:
    """Every budget a run of these campaigns is held to (`spent`: the spend table by campaign).
    Raises ConfigError for a money budget without a price for the device type."""
    currency = settings.cost.currency
    price = price_per_gpu_hour(settings.cost.price_per_gpu_hour, device_type)
    budget = settings.budget
    scopes = [("run budget", None, budget.run)]
    scopes += [(f"campaign {c} budget", c, budget.campaigns.get(c, budget.campaign)) for c in campaigns]
    out = []
    for name, campaign, limit in scopes:
        before = spent.get(campaign, {}) if campaign else {}
        if limit.gpu_hours is not None:
            out.append(Budget(name, campaign, "GPU-hours", limit.gpu_hours, before.get("gpu_seconds", 0.0) / 3600,
                              1 / 3600))
        if limit.money is not None:
            if price is None:
                raise ConfigError(f"{name} of {limit.money:g} {currency}: cost.price_per_gpu_hour has no price "
                                  f"for device type {device_type or '(unknown)'}")
            out.append(Budget(name, campaign, currency, limit.money, before.get("money", 0.0), price / 3600))
    return out


def over_budget(budgets: list[Budget], quote: Quote) -> list[str]:
    """One line per budget the quote passes, naming the budget and the quote."""
    lines = []
    for budget in budgets:
        seconds = quote.gpu_seconds if budget.campaign_id is None else quote.by_campaign.get(budget.campaign_id, 0.0)
        if budget.spend(seconds) > budget.limit:
            lines.append(f"over budget: {budget}; the quote is {budget.amount(seconds * budget.per_gpu_second)}")
    return lines


def spend_of(outcome: RenderOutcome) -> float:
    """Device-seconds an attempt spent: its stages, or its wall time if it failed before any."""
    if outcome.device_seconds:
        return sum(outcome.device_seconds.values())
    return 0.0 if outcome.status == CANCELLED else (outcome.duration_s or 0.0)


class BudgetGuard:
    """A run's spend as it renders and the gate before each dispatch. `admit` and `settle` run on
    the render stream's thread, in the pool's loop; read the totals after the stream ended."""

    def __init__(self, budgets: list[Budget], quote: Quote, jobs: list[PlannedJob]):
        self.budgets = budgets
        self.quotes = quote.job_seconds
        self.campaign_of = {job.render_key: job.campaign_id for job in jobs}
        self.on_actors: dict[str, float] = {}  # admitted, not yet finished: render_key -> quote
        self.spent: dict[tuple[str, str | None], float] = defaultdict(float)  # (campaign, device type) -> device-s
        self.attempts: dict[tuple[str, str | None], int] = defaultdict(int)
        self.not_rendered: dict[str, int] = defaultdict(int)  # campaign -> shots left for later
        self.stopped_by: Budget | None = None
        # (campaign, provider) -> {clips delivered, usd (None when a clip had no price), usage_tokens,
        # estimated_tokens}: what the API providers billed (one task per clip, however many attempts polled it)
        self.api: dict[tuple[str, str], dict[str, Any]] = {}

    def admit(self, job: RenderJob) -> bool:
        quote = self.quotes.get(job.render_key, 0.0)
        for budget in self.budgets:
            if budget.campaign_id in (None, job.campaign_id) and \
                    budget.spend(self._committed(budget.campaign_id) + quote) > budget.limit:
                self.stopped_by = budget
                return False
        self.on_actors[job.render_key] = quote
        return True

    def _committed(self, campaign_id: str | None) -> float:
        """Device-seconds spent and on the actors, in the run or in one campaign."""
        spent = sum(s for (c, _), s in self.spent.items() if campaign_id in (None, c))
        return spent + sum(q for key, q in self.on_actors.items() if campaign_id in (None, self.campaign_of[key]))

    def settle(self, outcome: RenderOutcome) -> None:
        self.on_actors.pop(outcome.render_key, None)
        campaign = self.campaign_of[outcome.render_key]
        if outcome.error_class == NOT_ADMITTED:
            self.not_rendered[campaign] += 1
            return
        if outcome.status != CANCELLED or outcome.device_seconds:
            self.spent[(campaign, outcome.device_type)] += spend_of(outcome)
            self.attempts[(campaign, outcome.device_type)] += 1

    def provider_billed(self, campaign: str, backend: str, cost_usd: float | None,
                        usage: dict[str, Any] | None = None) -> None:
        """Count a clip an API provider rendered: `usage` as the provider reported it (the receipt
        keeps it per clip) and `cost_usd`, that usage at the configured prices (None if unpriced)."""
        billed = self.api.setdefault((campaign, backend), {"clips": 0, "usd": 0.0, "usage_tokens": None,
                                                           "estimated_tokens": None})
        billed["clips"] += 1
        billed["usd"] = None if billed["usd"] is None or cost_usd is None else billed["usd"] + cost_usd
        for name, tokens in zip(("usage_tokens", "estimated_tokens"), billed_tokens(usage)):
            if tokens is not None:
                billed[name] = (billed[name] or 0) + tokens

    @property
    def reason(self) -> str:
        return f"not rendered: budget ({self.stopped_by})" if self.stopped_by else ""

    @property
    def gpu_seconds(self) -> float:
        return sum(self.spent.values())

    def rows(self, run_id: str, settings: HorseSettings) -> list[dict[str, Any]]:
        """The run's rows of the spend table: one per campaign and device type."""
        rows = []
        campaigns = sorted({c for c, _ in self.spent} | set(self.not_rendered))
        for campaign in campaigns:
            devices = [d for c, d in self.spent if c == campaign] or [None]
            for i, device in enumerate(devices):
                seconds = self.spent.get((campaign, device), 0.0)
                price = price_per_gpu_hour(settings.cost.price_per_gpu_hour, device)
                rows.append({"run_id": run_id, "campaign_id": campaign, "device_type": device,
                             "gpu_seconds": round(seconds, 3),
                             "money": None if price is None else round(seconds / 3600 * price, 4),
                             "currency": settings.cost.currency, "renders": self.attempts.get((campaign, device), 0),
                             "not_rendered_budget": self.not_rendered.get(campaign, 0) if i == 0 else 0})
        for (campaign, backend), billed in sorted(self.api.items()):  # providers bill in USD
            rows.append({"run_id": run_id, "campaign_id": campaign, "device_type": f"api:{backend}",
                         "gpu_seconds": 0.0, "money": None if billed["usd"] is None else round(billed["usd"], 4),
                         "currency": "USD", "renders": billed["clips"], "not_rendered_budget": 0,
                         "usage_tokens": billed["usage_tokens"], "estimated_tokens": billed["estimated_tokens"]})
        return rows


def create_spend_table(label: str, rows: list[dict[str, Any]], budgets: list[Budget], reason: str) -> None:
    """The run's spend per campaign as a Prefect table artifact (inside a flow run)."""
    from prefect.artifacts import create_table_artifact

    from flows.report import artifact_key

    table = [{"campaign": r["campaign_id"], "device_type": r["device_type"] or "",
              "gpu_hours": round(r["gpu_seconds"] / 3600, 4), "money": r["money"], "currency": r["currency"],
              "renders": r["renders"], "not_rendered_budget": r["not_rendered_budget"],
              "usage_tokens": r.get("usage_tokens"), "estimated_tokens": r.get("estimated_tokens")} for r in rows]
    limits = "; ".join(map(str, budgets)) or "no budget"
    create_table_artifact(table=table, key=artifact_key(label, "spend"),
                          description=f"Spend of this run of {label} ({limits}){'. ' + reason if reason else ''}")
