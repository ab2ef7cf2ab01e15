"""Planning: shots → variants → render jobs with render keys, and what is already in the catalog.

A variant is one (language, aspect ratio, take) of a shot; a shot without dialogue and without
languages (B-roll) has no language axis: one variant per (aspect ratio, take). Its `render_key` hashes every input
that changes pixels or sound, so the same key means the same clip: reruns and backfills skip it.

A preview (the manifest's `preview` column, or a run's `preview` parameter) renders a take at 256p
as variant `<variant>-preview` and keeps its base latent, so `flows.promote` can finish the
chosen takes at 540p or 1080p later: a preview is a plain 256p render, with the same render key.
A variant with destinations also hashes their specs and the re-roll count: they decide which seed
is delivered (a black or frozen picture is re-rolled) and the masters made from it. A variant the
dialogue gate checks hashes the gate's policy (flows.dialogue): a wrong line is re-rolled too. A variant with a
brand adapter hashes the adapter's sha256 and strength (`model.stages.adapter_key_input`); the
adapter a row names (or `render.adapter`) is resolved to one registered version when planning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

from catalog import Store, render_key_grid, sha256_file
from catalog.adapters import UnknownAdapter
from catalog.ids import validate_id
from flows.destinations import RunDestinations, destination_spec
from flows.dialogue import DialoguePolicy
from flows.manifest import Shot, gc_paused
from flows.routing import Routes, api_variants
from flows.settings import HorseSettings
from model.geometry import BASE_TIER
from model.prompt import compose_prompt
from model.stages import adapter_key_input

# Bump when a change outside the model weights alters rendered bytes (sampler code, encoder
# settings, mp4 tags): every render key changes, so the next run re-renders everything.
PIPELINE_CACHE_VERSION = 2    # 2: x264 with a fixed count of frame threads, audio interleaved
FPS = 25
PREVIEW, PROMOTED = "preview", "promoted"  # roles of a job (and of its version entry) in preview -> promote
# What a run needs of a render the catalog already has (version entries); the planner reads
# only these columns of the index.
CACHED_COLUMNS = ["render_key", "status", "blob_uri", "sha256", "poster_uri", "rendered_seed", "qc_status"]


class PlanError(ValueError):
    """A shot that cannot be planned (e.g. a backfill language it has no dialogue lines for)."""


@dataclass(frozen=True)
class Filters:
    """Variant axes a backfill narrows or extends; None keeps the manifest's own values."""

    languages: tuple[str, ...] | None = None
    aspect_ratios: tuple[str, ...] | None = None
    takes: int | None = None
    shot_ids: tuple[str, ...] | None = None
    resolution: str | None = None  # render at this tier instead of the manifest's (a promote)
    preview: bool | None = None    # True: previews of every take; False: none; None: the manifest's column
    force_approved: tuple[str, ...] = ()  # shots whose approved variants are rendered again (recorded as forced)


# Dispatch order after the manifest's priority and the hero tag: previews (cheap, and what a
# reviewer waits for) before full renders before promotes (DESIGN §12 staged renders).
KIND_RANK = {"preview": 2, "render": 1, "promote": 0}
HERO_TAG = "hero"


@dataclass(frozen=True)
class AdapterChoice:
    """The brand adapter a variant renders with: one registered version and a strength."""

    name: str  # brand@N
    sha256: str  # the adapter blob's address (= model.adapters.Adapter.sha256)
    uri: str
    strength: float

    def record(self) -> dict[str, Any]:
        """What receipts and lineage say of it."""
        return {"name": self.name, "sha256": self.sha256, "uri": self.uri, "strength": self.strength}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 6x, over 400k variants seconds
class PlannedJob:
    """One variant to render; treat it as immutable (its render key hashes its fields)."""

    campaign_id: str
    shot_id: str
    variant: str
    language: str | None  # None: a shot without dialogue, rendered once (no language axis)
    aspect_ratio: str
    take: int
    seed: int
    resolution: str
    seconds: float
    width: int
    height: int
    prompt: str
    render_key: str
    profile: str = "distill"
    model_fingerprint: str = ""
    priority: int = 0
    hero: bool = False  # tagged `hero` in the manifest: first among shots of its priority
    kind: str = "render"  # preview | render | promote: which stages it runs (flows.cost)
    image_path: str | None = None
    audio_path: str | None = None
    image_sha256: str | None = None
    audio_sha256: str | None = None
    destinations: tuple[Any, ...] = ()  # media.qc.Destination
    max_rerolls: int = 0
    expects_speech: bool = False  # the variant has dialogue lines
    delivery: dict[str, Any] | None = None  # the destinations' specs in the key (one dict per shot and language)
    backend: str = "local"  # or the API provider that renders it (flows.routing)
    api_request: Any = field(default=None, compare=False, repr=False)  # its ApiRequest, for a provider
    api_key_inputs: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # a provider's key inputs
    dialogue: Any = field(default=None, compare=False, repr=False)  # horse_actors.DialogueCheck, None: no line
    dialogue_key: dict[str, Any] | None = None  # the gate's policy in the key (flows.dialogue), None: not heard
    adapter: AdapterChoice | None = None
    role: str | None = None  # PREVIEW, PROMOTED, or None for a plain render
    # a promoted take's preview: {render_key, variant, blob_uri, sha256, stage_key} of its version entry
    promoted_from: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def key_inputs(self) -> dict[str, Any]:
        """Every input that changes pixels or sound: what `render_key` hashes."""
        if self.api_key_inputs is not None:
            return self.api_key_inputs
        return {**_shot_inputs(self.resolution, self.seconds, self.profile, self.image_sha256, self.audio_sha256,
                               self.model_fingerprint, self.adapter),
                **_language_inputs(self.prompt, self.language, self.delivery, self.dialogue_key),
                **_variant_inputs(self.aspect_ratio, self.width, self.height, self.seed)}

    @property
    def dispatch_priority(self) -> tuple[int, int, int]:
        """Higher goes first: manifest priority, then hero shots, then previews before promotes.
        The pool dispatches in this order (`RenderJob.priority`), so a budget or deadline cut
        drops the least important work."""
        return (self.priority, int(self.hero), KIND_RANK[self.kind])

    def entry(self) -> dict[str, Any]:
        """The identifying fields shared by receipts, index rows and version entries."""
        entry = {
            "campaign_id": self.campaign_id,
            "shot_id": self.shot_id,
            "variant": self.variant,
            "language": self.language,
            "aspect_ratio": self.aspect_ratio,
            "take": self.take,
            "seed": self.seed,
            "render_key": self.render_key,
        }
        if self.role:
            entry["role"] = self.role
        return entry


def _shot_inputs(resolution, seconds, profile, image_sha256, audio_sha256, fingerprint,
                 adapter: AdapterChoice | None) -> dict:
    """The key inputs every variant of one shot shares (in every language)."""
    inputs = {"resolution": resolution, "fps": FPS, "seconds": seconds, "profile": profile,
              "image_sha256": image_sha256, "audio_sha256": audio_sha256, "model_fingerprint": fingerprint,
              "pipeline_cache_version": PIPELINE_CACHE_VERSION}
    if adapter is not None:  # without one the key stays what it was before adapters
        inputs["adapter"] = adapter_key_input(adapter.sha256, adapter.strength)
    return inputs


def _language_inputs(prompt, language, delivery, dialogue_key) -> dict:
    """The key inputs of one shot's language (the dialogue lines are in its prompt)."""
    inputs = {"prompt": prompt, "language": language}
    if delivery is not None:  # without destinations the key stays what it was before delivery QC
        inputs["delivery"] = delivery
    if dialogue_key is not None:  # without a gate that hears it the key stays what it was before the gate
        inputs["dialogue"] = dialogue_key
    return inputs


def _variant_inputs(aspect_ratio: str, width: int, height: int, seed: int) -> dict:
    return {"aspect_ratio": aspect_ratio, "width": width, "height": height, "seed": seed}


@dataclass
class Plan:
    jobs: list[PlannedJob]
    cached: dict[str, dict]  # render_key -> index row (or receipt) of a finished render
    model_fingerprint: str
    errors: list[str] = field(default_factory=list)
    # approved variants (catalog.approvals): their approved version entries, published as they
    # are ("kept (approved)"), never rendered again; `lifted`: those `force_approved` renders again
    kept: list[dict] = field(default_factory=list)
    lifted: list[dict] = field(default_factory=list)

    @property
    def todo(self) -> list[PlannedJob]:
        return [job for job in self.jobs if job.render_key not in self.cached]

    @property
    def clip_seconds_todo(self) -> float:
        """Clip seconds the local GPUs render (API clips are quoted per provider: flows.routing)."""
        return sum(job.seconds for job in self.todo if job.backend == "local")


@lru_cache(maxsize=4096)
def variant_id(language: str | None, aspect_ratio: str, take: int, preview: bool = False) -> str:
    """`en-16x9-t1`; without a language axis just `16x9-t1`; a preview `en-16x9-t1-preview`."""
    axes = [language] if language else []
    suffix = ["preview"] if preview else []
    return validate_id("-".join([*axes, aspect_ratio.replace(":", "x"), f"t{take}", *suffix]), "variant")


@lru_cache(maxsize=1024)
def _variant_ids(languages: tuple, aspect_ratios: tuple, takes: int, preview: bool) -> tuple[tuple[str, ...], ...]:
    """The variant ids of a shot per language, per (aspect ratio, take): a night has a few such sets."""
    return tuple(tuple(variant_id(language, aspect, take, preview) for aspect in aspect_ratios
                       for take in range(1, takes + 1)) for language in languages)


def take_seed(seed: int, take: int) -> int:
    """Take 1 renders with the manifest's seed; later takes get seeds derived from it, so adding
    takes never changes earlier ones and every language/aspect of one take shares its seed."""
    if take == 1:
        return seed
    digest = hashlib.sha256(f"horse-take:{seed}:{take}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def expand_shot(shot: Shot, model: "ModelInfo", filters: Filters = Filters(),
                destinations: RunDestinations | None = None, dialogue: DialoguePolicy | None = None,
                adapter: AdapterChoice | None = None) -> list[PlannedJob]:
    """Every variant of a validated shot (its reference files are already checked paths);
    `destinations`: the run's (None: no delivery QC); `dialogue`: the run's gate (None: no gate);
    `adapter`: the shot's resolved brand adapter (None: the base model)."""
    # A shot without languages has no language axis, so a backfill's languages leave it alone.
    languages: tuple[str | None, ...] = (filters.languages or shot.languages) if shot.languages else (None,)
    aspects = filters.aspect_ratios or shot.aspect_ratios
    takes = filters.takes or shot.takes
    preview = shot.preview if filters.preview is None else filters.preview
    resolution = BASE_TIER if preview else filters.resolution or shot.resolution
    lines_of = _lines_by_language(shot)  # the lines each language speaks, as compose_prompt takes them
    if shot.dialogue:
        missing = [code for code in languages if code not in lines_of]
        if missing:
            raise PlanError(f"languages: no dialogue lines for {', '.join(missing)}")
    image, audio = shot.reference_image_uri, shot.reference_audio_uri
    try:
        image_sha256 = sha256_file(image)[0] if image else None
        audio_sha256 = sha256_file(audio)[0] if audio else None
    except OSError as exc:  # validated at intake, gone since
        raise PlanError(f"reference file cannot be read: {exc.filename} ({exc.strerror})") from None
    hero = HERO_TAG in shot.tags
    kind = "preview" if preview else "render"  # a promote is planned by flows.promote
    role = PREVIEW if preview else None
    # a preview is for review, not for delivery: its masters are made when it is promoted
    delivered_to = destinations.for_shot(shot.destinations) if destinations and not preview else ()
    max_rerolls = destinations.max_rerolls if delivered_to else 0
    specs = sorted((destination_spec(d) for d in delivered_to), key=lambda d: d["name"]) if delivered_to else []
    delivered_names = [d.name for d in delivered_to] if delivered_to else []
    # The (aspect ratio, take) axes are the same in every language: their key inputs are made once.
    seeds = [take_seed(shot.seed, take) for take in range(1, takes + 1)]
    axes = [(aspect, width, height, take, seed)
            for aspect, (width, height) in [(aspect, model.size_for(resolution, aspect)) for aspect in aspects]
            for take, seed in enumerate(seeds, start=1)]
    variant_inputs = [_variant_inputs(aspect, width, height, seed) for aspect, width, height, _, seed in axes]
    campaign_id, shot_id, seconds, priority = shot.campaign_id, shot.shot_id, shot.duration_s, shot.priority
    profile, fingerprint = model.profile, model.fingerprint
    per_language = []  # (language, prompt, lines, delivery, gate key, check)
    for language in languages:
        lines = lines_of.get(language, []) if language else []
        prompt = compose_prompt(shot.scene, lines, shot.background_sound)
        delivery = ({"destinations": specs, "max_rerolls": max_rerolls, "expects_speech": bool(lines)}
                    if delivered_to else None)
        gate_key, check = dialogue.for_variant(language, [line["line"] for line in lines], shot.must_say,
                                               delivered_names) if dialogue else (None, None)
        per_language.append((language, prompt, lines, delivery, gate_key, check))
    keys = render_key_grid(
        _shot_inputs(resolution, seconds, profile, image_sha256, audio_sha256, fingerprint, adapter),
        [_language_inputs(prompt, language, delivery, gate_key) for language, prompt, _, delivery, gate_key, _ in per_language],
        variant_inputs)
    variants = _variant_ids(tuple(languages), tuple(aspects), takes, preview)
    return [PlannedJob(campaign_id, shot_id, variant, language,
                       aspect, take, seed, resolution, seconds, width, height, prompt, key,
                       profile, fingerprint, priority, hero, kind, image, audio, image_sha256,
                       audio_sha256, delivered_to, max_rerolls, bool(lines), delivery,
                       dialogue=check, dialogue_key=gate_key, adapter=adapter, role=role)
            for (language, prompt, lines, delivery, gate_key, check), language_keys, language_variants
            in zip(per_language, keys, variants)
            for (aspect, width, height, take, seed), key, variant in zip(axes, language_keys, language_variants)]


def _lines_by_language(shot: Shot) -> dict[str, list[dict[str, str]]]:
    """{language: its dialogue lines as dicts, as compose_prompt takes them}, in manifest order."""
    lines: dict[str, list[dict[str, str]]] = {}
    for line in shot.dialogue:  # a line's fields are text: its __dict__ is its model_dump, at a tenth of the cost
        lines.setdefault(line.language, []).append(dict(vars(line)))
    return lines


@dataclass(frozen=True)
class ModelInfo:
    """What planning needs to know about the model without holding its weights."""

    fingerprint: str
    profile: str
    sizes: Any  # callable (resolution, aspect_ratio) -> (width, height)
    stage_fingerprints: dict[str, str] = field(default_factory=dict)  # per model stage: what stage keys name
    _sizes: dict = field(default_factory=dict, compare=False, repr=False)  # (resolution, aspect) -> size

    def size_for(self, resolution: str, aspect_ratio: str) -> tuple[int, int]:
        size = self._sizes.get((resolution, aspect_ratio))
        if size is None:  # a handful of tiers and aspect ratios, asked for every variant
            size = self._sizes[resolution, aspect_ratio] = self.sizes(resolution, aspect_ratio)
        return size


def model_info(settings: HorseSettings) -> ModelInfo:
    """Fingerprint and output sizes of the configured model, without torch or any weights (file
    digests of a checkpoint are cached per machine, so this is cheap after the first time)."""
    from model import describe_checkpoint, describe_tiny

    resolved = settings.resolved_model()
    if resolved.checkpoint_dir is None:
        described = describe_tiny()
    else:
        described = describe_checkpoint(resolved.checkpoint_dir)
    return ModelInfo(described.fingerprint, resolved.profile, described.size_for, described.stage_fingerprints)


def shot_adapter(shot: Shot, store: Store, default: str | None = None, default_strength: float = 1.0,
                 resolved: dict[str, dict] | None = None) -> AdapterChoice | None:
    """The adapter a shot renders with: its row's, else the run's default (`render.adapter`),
    as the registered version the name means now; PlanError if that name is not registered."""
    name = shot.adapter or default
    if name is None:
        return None
    resolved = {} if resolved is None else resolved
    if name not in resolved:
        try:
            resolved[name] = store.adapters.resolve(name)
        except UnknownAdapter as exc:
            where = "adapter" if shot.adapter else "render.adapter (configuration)"
            raise PlanError(f"{where}: {exc}") from None
    record = resolved[name]
    strength = shot.adapter_strength if shot.adapter_strength is not None else default_strength
    return AdapterChoice(record["name"], record["sha256"], record["uri"], float(strength))


def make_plan(shots: Iterable[Shot], model: ModelInfo, store: Store, filters: Filters = Filters(),
              destinations: RunDestinations | None = None, routes: Routes = Routes(),
              dialogue: DialoguePolicy | None = None, default_adapter: str | None = None,
              default_adapter_strength: float = 1.0, cached_columns: list[str] = CACHED_COLUMNS) -> Plan:
    """Expand every shot on the backend `routes` give it, with its brand adapter (its row's or
    `default_adapter`), keep approved variants as they are (except on `filters.force_approved`
    shots), then ask the catalog once which render keys already exist (their index rows hold
    `cached_columns`: a dry run needs only the keys). `dialogue`: the run's gate (local and API
    clips are heard alike; API clips are never re-rolled)."""
    with gc_paused():
        return _make_plan(shots, model, store, filters, destinations, routes, dialogue, default_adapter,
                          default_adapter_strength, cached_columns)


def _make_plan(shots, model, store, filters, destinations, routes, dialogue, default_adapter,
               default_adapter_strength, cached_columns) -> Plan:
    by_shot: list[tuple[tuple[int, int, int], list[PlannedJob]]] = []  # (dispatch priority, the shot's jobs)
    errors: list[str] = []
    resolved: dict[str, dict] = {}  # adapter name -> record: one registry read per name and run
    for shot in shots:
        if filters.shot_ids and shot.shot_id not in filters.shot_ids:
            continue
        try:
            adapter = shot_adapter(shot, store, default_adapter, default_adapter_strength, resolved)
            backend = routes.backend_for(shot)
            if backend == "local":
                shot_jobs = expand_shot(shot, model, filters, destinations, dialogue, adapter)
            elif adapter is not None:  # a provider cannot apply our adapter: never a key it did not honour
                raise PlanError(f"adapter: {adapter.name} renders on local actors only, not on backend {backend}")
            else:
                shot_jobs = api_variants(shot, routes.provider(backend), model, filters, destinations, dialogue)
        except (PlanError, ValueError) as exc:
            errors.append(f"row {shot.row} (shot {shot.shot_id}), {exc}")
            continue
        if shot_jobs:
            by_shot.append((shot_jobs[0].dispatch_priority, shot_jobs))
    # In dispatch order (stable: manifest order among equals), so the run collects its chunks in
    # the order the pool renders them. A shot's jobs share its priority, hero tag and kind, so
    # sorting shots (stably) puts the jobs in the order sorting each job would, at a quarter of the
    # key computations.
    by_shot.sort(key=_first, reverse=True)
    jobs = [job for _, shot_jobs in by_shot for job in shot_jobs]
    shots = {(shot_jobs[0].campaign_id, shot_jobs[0].shot_id) for _, shot_jobs in by_shot}
    del by_shot
    jobs, kept, lifted = keep_approved(jobs, store, set(filters.force_approved), shots)
    # Looked up in the plan's campaigns only: the cost follows the campaign, not the whole index.
    # A key first rendered for another campaign is found by its receipt (Store.recover_unindexed).
    # (Kept approved variants may have taken a campaign's every job: then its jobs say which are left.)
    campaigns = {campaign for campaign, _ in shots} if not kept else {job.campaign_id for job in jobs}
    cached = (store.index.existing([job.render_key for job in jobs], columns=cached_columns,
                                   campaigns=campaigns) if jobs else {})
    return Plan(jobs=jobs, cached=cached, model_fingerprint=model.fingerprint, errors=errors, kept=kept, lifted=lifted)


def _first(pair: tuple) -> Any:
    return pair[0]


def keep_approved(jobs: list[PlannedJob], store: Store, force_approved: set[str],
                  shots: set[tuple[str, str]] | None = None):
    """(jobs to plan, approved entries kept, approved entries lifted by `force_approved`): an
    approved variant of a planned shot is never rendered again nor replaced, whatever its inputs
    are now, and stays in the campaign's next version even when this run does not plan it (a
    preview run keeps the approved promoted clip). `shots`: the (campaign, shot) pairs of `jobs`
    when the caller knows them (None: read off the jobs)."""
    if shots is None:
        shots = {(job.campaign_id, job.shot_id) for job in jobs}
    approved: dict[tuple[str, str, str], dict] = {}
    for campaign_id in sorted({campaign for campaign, _ in shots}):
        approved |= {(campaign_id, *k): e for k, e in store.approved_entries(campaign_id).items()
                     if (campaign_id, k[0]) in shots}
    if not approved:  # nothing to keep: most nights; the jobs stay as they are
        return jobs, [], []
    kept = [e for (_, shot, _), e in approved.items() if shot not in force_approved]
    lifted = [e for (_, shot, _), e in approved.items() if shot in force_approved]
    pinned = {(e["campaign_id"], e["shot_id"], e["variant"]) for e in kept}
    return [job for job in jobs if (job.campaign_id, job.shot_id, job.variant) not in pinned], kept, lifted

