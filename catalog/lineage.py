"""OpenLineage run events for renders (START / COMPLETE / FAIL) with openlineage-python.

One run per shot render. The parent run is the orchestrating (Prefect flow) run; inputs are the
manifest and the model checkpoint (version facet = their sha256); outputs are the blobs with a
content-hash facet; a custom run facet carries host, GPU, actor, timings and seed. A destination
master is a run of its own (job `make_master`, parented to its render): input the clip's blob,
output the master's blob with a delivery-QC facet (destination, passed, every check).

Default transport: openlineage-python's FileTransport writing one JSON file per event under
<root>/lineage/<yyyy-mm-dd>/<run_id>-<EVENT>-<timestamp>.json through the store's own filesystem
(so credentials are never copied into transport config, which the client logs). Any other
transport (e.g. {"type": "http", "url": ..., "endpoint": "api/v1/lineage"}) by configuration.
"""

from __future__ import annotations

import json
import re
import socket
import uuid as _uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Literal

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    RunFacet,
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    tags_run,
)
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.transport import Config, Transport
from openlineage.client.uuid import generate_new_uuid

from .redact import get_logger, redact_url, scrub
from .root import Root

log = get_logger(__name__)
HOSTNAME = socket.gethostname()

PRODUCER = "https://github.com/horse-studio/horse/tree/main/catalog"
FACET_SCHEMA = "https://horse-studio.github.io/horse/spec/facets/1-0-0/{name}.json#/$defs/{name}"
EventType = Literal["START", "COMPLETE", "FAIL", "ABORT", "RUNNING", "OTHER"]
_SECRETISH = re.compile(r"(secret|token|password|passwd|credential|signature|api_?key|access_?key|(^|_)sas($|_))", re.I)


@attr.define
class RenderRuntimeRunFacet(RunFacet):
    """Where and how a render ran: host, GPU, Ray actor, timings (seconds), seed, attempt."""

    host: str | None = attr.field(default=None)
    gpu: str | None = attr.field(default=None)
    gpuIds: list[str] | None = attr.field(default=None)  # noqa: N815
    actorId: str | None = attr.field(default=None)  # noqa: N815
    nodeId: str | None = attr.field(default=None)  # noqa: N815
    attempt: int | None = attr.field(default=None)
    seed: int | None = attr.field(default=None)
    timings: dict[str, float] | None = attr.field(default=None)
    extra: dict[str, Any] | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA.format(name="RenderRuntimeRunFacet")


@attr.define
class ContentHashDatasetFacet(DatasetFacet):
    """The content hash of a blob dataset (its identity; the key is derived from it)."""

    algorithm: str = attr.field(default="sha256")
    digest: str | None = attr.field(default=None)
    size: int | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA.format(name="ContentHashDatasetFacet")


@attr.define
class DeliveryQCDatasetFacet(DatasetFacet):
    """A destination master's QC: its destination, whether it passed, every check
    ({name: {passed, measured, limit}})."""

    destination: str | None = attr.field(default=None)
    passed: bool | None = attr.field(default=None)
    checks: dict[str, Any] | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA.format(name="DeliveryQCDatasetFacet")


RUNTIME_FACET = "horse_renderRuntime"
CONTENT_HASH_FACET = "horse_contentHash"
DELIVERY_QC_FACET = "horse_deliveryQC"


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage (namespace, name) for a URI: s3://bucket/key -> ('s3://bucket', 'key'),
    file:///p -> ('file', '/p'), memory:///p -> ('memory', '/p'), other names -> ('horse', name)."""
    uri = redact_url(uri)
    if "://" not in uri:
        return ("file", uri) if uri.startswith("/") else ("horse", uri)
    scheme, rest = uri.split("://", 1)
    if scheme in ("file", "memory"):
        return scheme, "/" + rest.lstrip("/")
    bucket, _, key = rest.partition("/")
    return f"{scheme}://{bucket}", key


@dataclass(frozen=True)
class LineageInput:
    uri: str
    version: str | None = None  # sha256 / fingerprint


def _uuid_str(value: str | None, field: str) -> str:
    if value is None:
        return str(generate_new_uuid())
    try:
        return str(_uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{field} {str(value)[:60]!r} must be a UUID (OpenLineage run ids are UUIDs)") from None


def _clean(mapping: dict | None) -> dict:
    """Drop secret-looking names; stringify what JSON cannot hold."""
    out = {}
    for k, v in (mapping or {}).items():
        if _SECRETISH.search(str(k)):
            continue
        if isinstance(v, str):
            v = scrub(redact_url(v))
        elif not isinstance(v, (int, float, bool, type(None), list, dict)):
            v = str(v)
        out[str(k)] = v
    return out


# --- transport: FileTransport through the store's filesystem ---------------------------------

_FILESYSTEMS: dict[str, Any] = {}


def registered_filesystem(token: str):
    """Factory FileTransport calls (by dotted path) to get the store's filesystem instance."""
    return _FILESYSTEMS[token]


@dataclass
class StoreFileConfig(Config):
    pass


class StoreFileTransport(Transport):
    """Routes each event to its own file under lineage/<date>/ via FileTransport."""

    kind = "horse_store_file"
    config_class = StoreFileConfig

    def __init__(self, root: Root):
        self.root = root
        self._token = _uuid.uuid4().hex
        _FILESYSTEMS[self._token] = root.fs

    def emit(self, event: RunEvent) -> None:  # type: ignore[override]
        day = event.eventTime[:10]
        event_type = event.eventType.value if event.eventType else "OTHER"
        key = f"lineage/{day}/{event.run.runId}-{event_type}"
        path = self.root.path(key)

        def write() -> None:
            if self.root.protocol == "file":  # object stores have no folders (and s3fs would probe the bucket)
                self.root.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            FileTransport(FileConfig(
                log_file_path=path, append=False,
                filesystem=f"{__name__}.registered_filesystem", fs_kwargs={"token": self._token},
            )).emit(event)

        self.root.retrying("writing a lineage event", write)


class Lineage:
    def __init__(self, root: Root, transport: dict | None = None, job_namespace: str = "horse",
                 producer: str = PRODUCER):
        self.root = root
        self.job_namespace = job_namespace
        self.producer = producer
        config: dict[str, Any] = {"facets": {"source_code_location": {"disabled": True}}}
        if transport is None or transport.get("type") in (None, "store"):
            self.client = OpenLineageClient(transport=StoreFileTransport(root), config=config)
        else:
            self.client = OpenLineageClient(config={**config, "transport": dict(transport)})
        self.transport_kind = self.client.transport.kind

    def event(self, event_type: EventType, *, run_id: str | None = None, job_name: str = "render_shot",
              parent_run_id: str | None = None, parent_job_name: str | None = None,
              parent_namespace: str = "prefect", inputs: Iterable[LineageInput | dict] = (),
              outputs: Iterable[Any] = (), runtime: dict | None = None, tags: dict | None = None,
              error_message: str | None = None, stack_trace: str | None = None,
              event_time: datetime | None = None, job_type: str = "TASK") -> RunEvent:
        """Build (not emit) a RunEvent."""
        run_id = _uuid_str(run_id, "run_id")
        run_facets: dict[str, RunFacet] = {}
        if parent_run_id is not None:
            run_facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=_uuid_str(parent_run_id, "parent_run_id")),
                job=parent_run.Job(namespace=parent_namespace, name=parent_job_name or "flow"),
                producer=self.producer,
            )
        if tags:
            run_facets["tags"] = tags_run.TagsRunFacet(
                tags=[tags_run.TagsRunFacetFields(k, str(v), "HORSE") for k, v in _clean(tags).items()],
                producer=self.producer,
            )
        if runtime:
            rt = {"host": HOSTNAME, **_clean(runtime)}
            known = {f.name for f in attr.fields(RenderRuntimeRunFacet)} - {"extra", "_producer", "_schemaURL"}
            alias = {"actor_id": "actorId", "node_id": "nodeId", "gpu_ids": "gpuIds"}
            rt = {alias.get(k, k): v for k, v in rt.items()}
            fields = {k: rt.pop(k) for k in list(rt) if k in known}
            if fields.get("gpuIds") is not None:
                fields["gpuIds"] = [str(g) for g in fields["gpuIds"]]
            run_facets[RUNTIME_FACET] = RenderRuntimeRunFacet(
                **fields, extra=rt or None, producer=self.producer)
        if error_message is not None:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=scrub(error_message)[:4000], programmingLanguage="python",
                stackTrace=scrub(stack_trace)[:20000] if stack_trace else None, producer=self.producer)
        job = Job(namespace=self.job_namespace, name=job_name, facets={
            "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="HORSE",
                                                    jobType=job_type, producer=self.producer)})
        return RunEvent(
            eventType=RunState(event_type),
            eventTime=(event_time or datetime.now(timezone.utc)).isoformat(),
            run=Run(runId=run_id, facets=run_facets), job=job, producer=self.producer,
            inputs=[self._input(i) for i in inputs], outputs=[self._output(o) for o in outputs],
        )

    def emit(self, event_type: EventType, **kwargs: Any) -> RunEvent:
        """Build and emit a RunEvent; see event() for the arguments. Returns the event."""
        ev = self.event(event_type, **kwargs)
        self.client.emit(ev)
        return ev

    def start(self, **kwargs: Any) -> RunEvent:
        return self.emit("START", **kwargs)

    def complete(self, **kwargs: Any) -> RunEvent:
        return self.emit("COMPLETE", **kwargs)

    def fail(self, **kwargs: Any) -> RunEvent:
        return self.emit("FAIL", **kwargs)

    def _input(self, item: LineageInput | dict) -> InputDataset:
        if isinstance(item, dict):
            item = LineageInput(uri=item["uri"], version=item.get("version") or item.get("sha256"))
        ns, name = dataset_name(item.uri)
        facets = {}
        if item.version:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=str(item.version), producer=self.producer)
        return InputDataset(namespace=ns, name=name, facets=facets)

    def _output(self, item: Any) -> OutputDataset:
        if not isinstance(item, dict):  # BlobRef or anything with uri/sha256/bytes
            item = {"uri": item.uri, "sha256": getattr(item, "sha256", None), "bytes": getattr(item, "bytes", None)}
        ns, name = dataset_name(item["uri"])
        facets: dict[str, DatasetFacet] = {}
        if item.get("sha256"):
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=item["sha256"], producer=self.producer)
            facets[CONTENT_HASH_FACET] = ContentHashDatasetFacet(
                digest=item["sha256"], size=item.get("bytes"), producer=self.producer)
        if item.get("qc"):
            facets[DELIVERY_QC_FACET] = DeliveryQCDatasetFacet(**item["qc"], producer=self.producer)
        return OutputDataset(namespace=ns, name=name, facets=facets, outputFacets={
            "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                size=item.get("bytes"), fileCount=1, producer=self.producer)})

    def read_events(self, day: str | None = None) -> list[RunEvent]:
        """Parse back the events the file transport wrote (all days, or one 'YYYY-MM-DD')."""
        prefix = f"lineage/{day}" if day else "lineage"
        keys = [k for k in self.root.list_files(prefix) if k.endswith(".json")]
        events = [parse_event(data) for data in self.root.read_many(keys).values()]
        return sorted(events, key=lambda e: e.eventTime)


# --- parsing events back into openlineage-python objects ---------------------------------------

def _facet(cls, body: dict):
    body = dict(body)
    producer = body.pop("_producer", "")
    body.pop("_schemaURL", None)
    body.pop("_deleted", None)
    return cls(**body, producer=producer)


def _run_facets(facets: dict) -> dict:
    out = {}
    for key, body in (facets or {}).items():
        if key == "parent":
            out[key] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=body["run"]["runId"]),
                job=parent_run.Job(namespace=body["job"]["namespace"], name=body["job"]["name"]),
                producer=body.get("_producer", ""))
        elif key == "tags":
            out[key] = tags_run.TagsRunFacet(
                tags=[tags_run.TagsRunFacetFields(t["key"], t["value"], t.get("source")) for t in body.get("tags", [])],
                producer=body.get("_producer", ""))
        elif key == "errorMessage":
            out[key] = _facet(error_message_run.ErrorMessageRunFacet, body)
        elif key == RUNTIME_FACET:
            out[key] = _facet(RenderRuntimeRunFacet, body)
    return out


def _dataset_facets(facets: dict) -> dict:
    out = {}
    for key, body in (facets or {}).items():
        if key == "version":
            out[key] = _facet(dataset_version_dataset.DatasetVersionDatasetFacet, body)
        elif key == CONTENT_HASH_FACET:
            out[key] = _facet(ContentHashDatasetFacet, body)
        elif key == DELIVERY_QC_FACET:
            out[key] = _facet(DeliveryQCDatasetFacet, body)
    return out


def parse_event(data: bytes | str | dict) -> RunEvent:
    """A RunEvent (openlineage.client.event_v2) from its JSON; facets this module emits are
    restored as their classes, others are dropped."""
    body = data if isinstance(data, dict) else json.loads(data)
    job = body["job"]
    jt = (job.get("facets") or {}).get("jobType")
    return RunEvent(
        eventType=RunState(body["eventType"]) if body.get("eventType") else None,
        eventTime=body["eventTime"], producer=body.get("producer", ""),
        run=Run(runId=body["run"]["runId"], facets=_run_facets(body["run"].get("facets"))),
        job=Job(namespace=job["namespace"], name=job["name"],
                facets={"jobType": _facet(job_type_job.JobTypeJobFacet, jt)} if jt else {}),
        inputs=[InputDataset(namespace=d["namespace"], name=d["name"], facets=_dataset_facets(d.get("facets")))
                for d in body.get("inputs") or []],
        outputs=[OutputDataset(
            namespace=d["namespace"], name=d["name"], facets=_dataset_facets(d.get("facets")),
            outputFacets={k: _facet(output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet, v)
                          for k, v in (d.get("outputFacets") or {}).items() if k == "outputStatistics"})
            for d in body.get("outputs") or []],
    )

