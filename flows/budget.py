"""Budgets: spend limits in GPU-hours or money, held against a plan's quote before a run starts and
against what the run spends while it renders (DESIGN §12 "cost model, budgets, priorities").

A run has its own budget (`budget.run`; `horse plan/render --budget-...`) and each campaign one
over all its runs (`budget.campaigns.<id>`, else `budget.campaign`), whose earlier spend is read
from the spend table. Money goes through `cost.price_per_gpu_hour` of the device type.

While a run renders, `BudgetGuard.admit` is asked before each dispatch: a shot is admitted only
if what is spent, what is on the actors (at their quotes) and its own quote stay within every
budget. After the first no the pool takes no new shot; the shots on actors finish (never a
half-written shot) and the rest are "not rendered: budget": a rerun renders exactly those.

A clip an API provider renders costs no GPU time but money: when it is admitted the guard holds
its quoted price (`flows.routing.clip_usd`) against every money budget, and when its outcome
arrives it settles to what the provider billed (`cost_usd`; the quoted price if the bill is
unknown, nothing if no clip came back). Providers bill in USD, so a money budget in another
currency, or a provider without a price, cannot hold API clips: the guard refuses to start.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection

from flows.cost import Quote
from flows.plan import PlannedJob
from flows.settings import ConfigError, HorseSettings
from horse_actors import RenderJob, RenderOutcome
from horse_actors.backends.spec import billed_tokens
from horse_actors.jobs import CANCELLED, NOT_ADMITTED

if TYPE_CHECKING:
    from flows.routing import Routes

API_CURRENCY = "USD"  # what the providers bill in (horse_actors.backends: cost_usd)

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

    def api_share(self, api_usd: dict[str, float]) -> float:
        """What this budget holds of API clips quoted at `api_usd` (USD per campaign): their sum
        over its campaigns for a budget in USD, nothing for GPU-hours (api_prices refuses a money
        budget in another currency before a run with API clips starts)."""
        if self.unit != API_CURRENCY:
            return 0.0
        return sum(usd for campaign, usd in api_usd.items() if self.campaign_id in (None, campaign))

    def quoted(self, gpu_seconds: float, api_usd: dict[str, float] | None = None) -> float:
        """The quote in this budget's unit: its GPU time, plus (a USD budget) its API clips."""
        return gpu_seconds * self.per_gpu_second + self.api_share(api_usd or {})

    def as_dict(self, gpu_seconds: float | None = None, api_usd: dict[str, float] | None = None) -> dict[str, Any]:
        out = {"budget": self.name, "campaign_id": self.campaign_id, "unit": self.unit, "limit": self.limit,
               "spent_before": round(self.spent_before, 4)}
        if gpu_seconds is not None:
            quoted = self.quoted(gpu_seconds, api_usd)
            out |= {"quote": round(quoted, 4), "over": self.spent_before + quoted > self.limit}
        return out


def budgets_for(settings: HorseSettings, campaigns: list[str], device_type: str | None,
                spent: dict[str, dict[str, float]], api_only: Collection[str] = ()) -> list[Budget]:
    """Every budget a run of these campaigns is held to (`spent`: the spend table by campaign).
    Raises ConfigError for a money budget without a price for the device type, unless it holds
    only campaigns in `api_only` (no GPU time to render: API clips are priced by their provider)."""
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
            # a run-wide budget is GPU-free when every campaign is; a campaign's when it is
            gpu_free = (bool(campaigns) and set(campaigns) <= set(api_only)) if campaign is None else campaign in api_only
            if price is None and not gpu_free:
                raise ConfigError(f"{name} of {limit.money:g} {currency}: cost.price_per_gpu_hour has no price "
                                  f"for device type {device_type or '(unknown)'}")
            out.append(Budget(name, campaign, currency, limit.money, before.get("money", 0.0), (price or 0.0) / 3600))
    return out


def budget_campaigns(quote: Quote, jobs: list[PlannedJob]) -> tuple[list[str], list[str]]:
    """(the campaigns whose budgets a plan is held to: those with GPU time to render (the quote)
    and those with API clips to render (`jobs`: the plan's to-do jobs); those of them with API
    clips only)."""
    api = {job.campaign_id for job in jobs if job.backend != "local"}
    return sorted({*quote.by_campaign, *api}), sorted(api - set(quote.by_campaign))


def over_budget(budgets: list[Budget], quote: Quote, api_usd: dict[str, float] | None = None) -> list[str]:
    """One line per budget the quote passes, naming the budget and the quote: the GPU time's, plus
    for a USD budget the API clips' quoted USD (`api_usd`: per campaign, `api_usd_by_campaign`)."""
    lines = []
    for budget in budgets:
        seconds = quote.gpu_seconds if budget.campaign_id is None else quote.by_campaign.get(budget.campaign_id, 0.0)
        quoted, api = budget.quoted(seconds, api_usd), budget.api_share(api_usd or {})
        if budget.spent_before + quoted > budget.limit:
            of_which = f" ({budget.amount(api)} of it API clips)" if api else ""
            lines.append(f"over budget: {budget}; the quote is {budget.amount(quoted)}{of_which}")
    return lines


def api_usd_by_campaign(budgets: list[Budget], jobs: list[PlannedJob], routes: "Routes | None") -> dict[str, float]:
    """The quoted USD of the API clips among `jobs` (the to-do jobs), per campaign: what the
    pre-run check adds to money budgets, as the dispatch guard does per clip. Raises ConfigError,
    as the guard would, when a money budget cannot hold them (`api_prices`)."""
    by_campaign: dict[str, float] = defaultdict(float)
    campaign_of = {job.render_key: job.campaign_id for job in jobs if job.backend != "local"}
    for key, usd in api_prices(budgets, jobs, routes).items():
        by_campaign[campaign_of[key]] += usd or 0.0  # no price: no money budget holds the campaign (refused above)
    return dict(by_campaign)


def spend_of(outcome: RenderOutcome) -> float:
    """Device-seconds an attempt spent: its stages, or its wall time if it failed before any."""
    if outcome.device_seconds:
        return sum(outcome.device_seconds.values())
    return 0.0 if outcome.status == CANCELLED else (outcome.duration_s or 0.0)


def api_prices(budgets: list[Budget], jobs: list[PlannedJob], routes: "Routes | None") -> dict[str, float | None]:
    """The quoted USD of each API job (`flows.routing.clip_usd`). Raises ConfigError when a money
    budget cannot hold them: one in another currency, or a provider without a price."""
    api = [job for job in jobs if job.backend != "local"]
    if not api:
        return {}
    if routes is None:
        raise ValueError("BudgetGuard: API jobs need the run's routes for their prices")
    from flows.routing import clip_usd

    prices = {job.render_key: clip_usd(job, routes.provider(job.backend)) for job in api}
    campaigns = {job.campaign_id for job in api}
    for budget in budgets:
        if budget.unit == "GPU-hours" or budget.campaign_id not in (None, *campaigns):
            continue
        if budget.unit != API_CURRENCY:
            raise ConfigError(f"{budget}: API providers bill in {API_CURRENCY}, so it cannot hold their clips "
                              f"(set cost.currency: {API_CURRENCY}, or route these shots to local)")
        unpriced = sorted({job.backend for job in api if prices[job.render_key] is None
                           and budget.campaign_id in (None, job.campaign_id)})
        if unpriced:
            raise ConfigError(f"{budget}: backend {', '.join(unpriced)} has no price (routing.providers.<name>."
                              "price_per_clip or price_per_million_tokens)")
    return prices


class BudgetGuard:
    """A run's spend as it renders and the gate before each dispatch. `admit` and `settle` run on
    the render stream's threads (the pool's loop, and the provider actors' for API clips), under
    one lock; read the totals after the stream ended. `routes`: the run's routing, for the price
    of each API job in `jobs` (None: the run has none)."""

    def __init__(self, budgets: list[Budget], quote: Quote, jobs: list[PlannedJob], routes: "Routes | None" = None):
        self.budgets = budgets
        self.quotes = quote.job_seconds
        self.campaign_of = {job.render_key: job.campaign_id for job in jobs}
        self.api_prices = api_prices(budgets, jobs, routes)  # render_key -> quoted USD, API jobs only
        self.on_actors: dict[str, float] = {}  # admitted, not yet finished: render_key -> quote
        self.spent: dict[tuple[str, str | None], float] = defaultdict(float)  # (campaign, device type) -> device-s
        self.attempts: dict[tuple[str, str | None], int] = defaultdict(int)
        self.not_rendered: dict[str, int] = defaultdict(int)  # campaign -> shots left for later
        self.stopped_by: Budget | None = None
        # (campaign, provider) -> {clips delivered, usd (None when a clip had no price), usage_tokens,
        # estimated_tokens}: what the API providers billed (one task per clip, however many attempts polled it)
        self.api: dict[tuple[str, str], dict[str, Any]] = {}
        self.api_held: dict[str, float] = {}  # admitted API clips, not yet settled: render_key -> quoted USD
        self.backend_of = {job.render_key: job.backend for job in jobs if job.render_key in self.api_prices}
        self._lock = threading.Lock()

    def admit(self, job: RenderJob) -> bool:
        with self._lock:
            api = job.render_key in self.api_prices
            seconds = 0.0 if api else self.quotes.get(job.render_key, 0.0)
            usd = self.api_prices.get(job.render_key) or 0.0
            for budget in self.budgets:
                if budget.campaign_id in (None, job.campaign_id) and self._held(budget, seconds, usd) > budget.limit:
                    self.stopped_by = budget
                    return False
            if api:
                self.api_held[job.render_key] = usd
            else:
                self.on_actors[job.render_key] = seconds
            return True

    def _held(self, budget: Budget, seconds: float, usd: float) -> float:
        """What `budget` would have spent and held with `seconds` of GPU time and `usd` of API
        clips more: GPU time spent and on the actors, and (a money budget) API clips billed and held."""
        campaign_id = budget.campaign_id
        total = budget.spend(self._committed(campaign_id) + seconds)
        if budget.unit == API_CURRENCY:
            total += usd + sum(b["usd"] for (c, _), b in self.api.items() if campaign_id in (None, c) and b["usd"])
            total += sum(u for key, u in self.api_held.items() if campaign_id in (None, self.campaign_of[key]))
        return total

    def _committed(self, campaign_id: str | None) -> float:
        """Device-seconds spent and on the actors, in the run or in one campaign."""
        spent = sum(s for (c, _), s in self.spent.items() if campaign_id in (None, c))
        return spent + sum(q for key, q in self.on_actors.items() if campaign_id in (None, self.campaign_of[key]))

    def settle(self, outcome: RenderOutcome) -> None:
        with self._lock:
            campaign = self.campaign_of[outcome.render_key]
            if outcome.error_class == NOT_ADMITTED:
                self.on_actors.pop(outcome.render_key, None)
                self.not_rendered[campaign] += 1
                return
            if outcome.render_key in self.api_prices:
                held = self.api_held.pop(outcome.render_key, None)
                if outcome.ok:  # a provider bills a delivered clip: at its usage, else at the quote
                    billed = getattr(outcome, "cost_usd", None)
                    self.provider_billed(campaign, self.backend_of[outcome.render_key],
                                         held if billed is None else billed, getattr(outcome, "usage", None))
                return
            self.on_actors.pop(outcome.render_key, None)
            if outcome.status != CANCELLED or outcome.device_seconds:
                self.spent[(campaign, outcome.device_type)] += spend_of(outcome)
                self.attempts[(campaign, outcome.device_type)] += 1

    def provider_billed(self, campaign: str, backend: str, cost_usd: float | None,
                        usage: dict[str, Any] | None = None) -> None:
        """Count a clip an API provider delivered (`settle` does, under the lock): `usage` as the
        provider reported it (the receipt keeps it per clip) and `cost_usd`, what it cost (None if
        unpriced)."""
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
