import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from openlineage.client.event_v2 import RunEvent, RunState
from openlineage.client.serde import Serde

from catalog import LineageInput, Store, parse_event

PARENT = "0191d3c4-5f6a-7b8c-9d0e-1f2a3b4c5d6e"


def _render_events(store):
    blob = store.put_blob(b"rendered clip", "mp4")
    poster = store.put_blob(b"poster", "jpg")
    inputs = [LineageInput("s3://briefs/campaign.parquet", "ab" * 32), {"uri": "/ckpt/happyhorse-1.0", "sha256": "cd" * 32}]
    common = dict(job_name="render_shot", parent_run_id=PARENT, parent_job_name="nightly", inputs=inputs,
                  tags={"campaign": "camp", "shot_id": "s1", "render_key": "ef" * 32})
    start = store.lineage.start(**common)
    done = store.lineage.complete(run_id=start.run.runId, outputs=[blob, poster],
                                  runtime={"gpu": "NVIDIA H100", "actor_id": "actor-3", "node_id": "n1",
                                           "seed": 1234, "attempt": 1, "gpu_ids": [0],
                                           "timings": {"denoise": 1.6, "encode": 0.4}, "queue_depth": 2},
                                  **common)
    return blob, start, done


def test_events_parse_back_and_link_outputs_to_inputs(store):
    blob, start, done = _render_events(store)
    store.lineage.fail(parent_run_id=PARENT, parent_job_name="nightly",
                       error_message="CUDA out of memory", stack_trace="Traceback ...")
    events = store.lineage.read_events()
    assert len(events) == 3 and all(isinstance(e, RunEvent) for e in events)
    by_type = {e.eventType: e for e in events}
    assert set(by_type) == {RunState.START, RunState.COMPLETE, RunState.FAIL}
    got = by_type[RunState.COMPLETE]
    # the round trip is exact for everything we emit
    assert Serde.to_dict(got) == Serde.to_dict(done)
    assert Serde.to_dict(by_type[RunState.START]) == Serde.to_dict(start)
    assert got.run.runId == start.run.runId
    assert got.run.facets["parent"].run.runId == PARENT and got.run.facets["parent"].job.name == "nightly"
    # inputs -> run -> outputs
    assert [(d.namespace, d.name) for d in got.inputs] == [("s3://briefs", "campaign.parquet"), ("file", "/ckpt/happyhorse-1.0")]
    assert got.inputs[0].facets["version"].datasetVersion == "ab" * 32
    out = got.outputs[0]
    assert (out.namespace + "/" + out.name if store.root.protocol == "s3" else "file://" + out.name) == blob.uri
    assert out.facets["horse_contentHash"].digest == blob.sha256 and out.facets["horse_contentHash"].size == blob.bytes
    rt = got.run.facets["horse_renderRuntime"]
    assert (rt.gpu, rt.actorId, rt.seed, rt.timings["denoise"], rt.host) == ("NVIDIA H100", "actor-3", 1234, 1.6, rt.host)
    assert rt.host and rt.extra == {"queue_depth": 2}
    assert by_type[RunState.FAIL].run.facets["errorMessage"].message == "CUDA out of memory"
    # one file per event under lineage/<date>/<run_id>-<EVENT>-...
    keys = store.root.list_files("lineage")
    assert len(keys) == 3 and any(f"{start.run.runId}-COMPLETE" in k for k in keys)


def test_http_transport_by_configuration(tmp_path):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        store = Store(tmp_path / "s", lineage={"type": "http", "url": url, "endpoint": "api/v1/lineage"})
        ev = store.lineage.start(parent_run_id=PARENT, parent_job_name="nightly")
    finally:
        server.shutdown()
    assert store.lineage.transport_kind == "http"
    assert received[0][0] == "/api/v1/lineage"
    assert parse_event(received[0][1]).run.runId == ev.run.runId
    assert store.root.list_files("lineage") == []
