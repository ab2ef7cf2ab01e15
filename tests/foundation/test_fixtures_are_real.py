"""Each session fixture is a real engine, proved by using it the way the project does."""

from __future__ import annotations


def test_ray_actor_runs_on_a_fake_gpu(ray_cluster):
    import ray

    @ray.remote(num_gpus=1)
    class GpuProbe:
        def ids(self):
            return ray.get_gpu_ids(), ray.get_runtime_context().get_node_id()

    actors = [GpuProbe.remote() for _ in range(2)]
    results = ray.get([a.ids.remote() for a in actors])
    gpu_ids = sorted(ids[0][0] for ids in results)
    assert gpu_ids == [0, 1], "each actor holds its own fake GPU"
    assert ray.cluster_resources()["GPU"] == 2
    node = ray.nodes()[0]
    assert node["NodeManagerAddress"] == "127.0.0.1", "Ray must bind loopback only"
    for actor in actors:
        ray.kill(actor)


def test_prefect_flow_run_is_read_back_from_the_test_server(prefect_api):
    from prefect import flow, get_client, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(name="fixture-probe")
    def probe(x: int) -> int:
        return double(x)

    state = probe(21, return_state=True)
    assert state.result() == 42
    flow_run_id = state.state_details.flow_run_id

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    import asyncio

    run = asyncio.run(read())
    assert run.state.is_completed()
    assert run.parameters == {"x": 21}
    assert prefect_api.startswith("http://127.0.0.1:")


def test_object_written_to_moto_s3_is_listed_by_s3fs(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    path = f"{s3_server['bucket']}/probe/hello.txt"
    with fs.open(path, "wb") as f:
        f.write(b"hello horse")
    fs.invalidate_cache()
    assert fs.ls(f"{s3_server['bucket']}/probe") == [path]
    assert fs.cat(path) == b"hello horse"
    assert s3_server["endpoint_url"].startswith("http://127.0.0.1:")


def test_tmp_store_is_an_empty_file_url(tmp_store):
    from pathlib import Path
    from urllib.parse import urlparse

    assert tmp_store.startswith("file://")
    assert list(Path(urlparse(tmp_store).path).iterdir()) == []


def test_missing_system_packages_fail_in_ci_and_skip_in_a_clone(monkeypatch):
    import re
    from pathlib import Path

    import pytest

    import tests.conftest as conftest

    ci_script = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert re.search(r"^export HORSE_CI=1\b", ci_script, re.MULTILINE), ".ci/run says it is CI"
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="needs chromium, which .ci/run installs"):
        conftest.require(None, "chromium")
    conftest.require("/usr/bin/chromium", "chromium")  # found: nothing to say
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="needs chromium"):
        conftest.require(None, "chromium")
