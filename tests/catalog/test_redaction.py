import logging
import pickle

import pytest

from catalog import Store, redact_options
from catalog_testlib import make_receipt, version_entry

PARENT = "0191d3c4-5f6a-7b8c-9d0e-1f2a3b4c5d6e"


def _secrets(options):
    return [options["key"], options["secret"]]


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def log_records():
    handler, root = Collect(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.records
    root.removeHandler(handler)
    root.setLevel(level)


def test_credentials_never_leave_the_store(s3_server, log_records):
    options = s3_server["storage_options"]
    secrets = _secrets(options)
    store = Store(f"s3://{s3_server['bucket']}/redaction", options)
    for text in (repr(store), str(store), repr(store.root), repr(store.root.redacted_options)):
        assert not any(s in text for s in secrets) and "***" in text
    assert "127.0.0.1" in repr(store)  # the harmless parts stay readable

    ok = make_receipt(store, "camp", "s1", "v1")
    bad = make_receipt(store, "camp", "s2", "v1", status="failed",
                       error_message=f"upload failed with secret={options['secret']}")
    assert options["secret"] not in store.write_receipt(bad)["error_message"]
    store.write_receipt(ok)
    store.index.commit([ok, bad], run_id="run-1")
    store.versions.publish("camp", [version_entry(ok)],
                           "s3://briefs/m.parquet", None, "fp", "git", "run-1")
    store.lineage.complete(parent_run_id=PARENT, parent_job_name="nightly", outputs=[store.put_blob(b"z")],
                           runtime={"gpu": "H100", "aws_secret_access_key": options["secret"]},
                           error_message=f"key {options['key']} leaked?")
    store.gc(grace=0, dry_run=True)
    store.index.existing([ok["render_key"]])
    logging.getLogger("catalog.root").debug("options were %s", options["secret"])  # a careless log line

    assert len(log_records) > 100, "expected log records to check"
    leaks = {(r.name, s) for r in log_records for s in secrets if s in r.getMessage()}
    assert not leaks, leaks
    # nothing stored anywhere under the root mentions a credential: receipts, manifests,
    # lineage events, Delta logs (commit metadata) and data files
    everything = store.root.read_many(store.root.list_files(""))
    assert len(everything) > 10
    for key, data in everything.items():
        assert not any(s.encode() in data for s in secrets), key


def test_urls_with_credentials_are_refused_without_echo():
    with pytest.raises(ValueError) as err:
        Store("s3://AKIAEXAMPLE:supersecretvalue@bucket/prefix")
    assert "supersecretvalue" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
    with pytest.raises(ValueError):
        Store("s3://bucket/prefix?X-Amz-Signature=abc")


def test_redact_options_by_allowlist(tmp_path):
    opts = {"key": "AKIA1234567", "secret": "s3cr3t-value", "token": "tok-123456789",
            "client_kwargs": {"endpoint_url": "http://u:p@host:9000", "region_name": "eu-west-1", "aws_session_token": "x" * 10},
            "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ALLOW_HTTP": "true", "anything_else": "hidden-value"}
    red = redact_options(opts)
    assert red["key"] == red["secret"] == red["token"] == red["AWS_SECRET_ACCESS_KEY"] == red["anything_else"] == "***"
    assert red["client_kwargs"] == {"endpoint_url": "http://host:9000", "region_name": "eu-west-1", "aws_session_token": "***"}
    assert red["AWS_ALLOW_HTTP"] == "true"
    store = Store(tmp_path / "s", {"auto_mkdir": True})
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(store)


def test_credentials_from_the_environment_are_scrubbed(s3_server, log_records, monkeypatch):
    """AWS_* variables are the documented way to give credentials: the store learns them as
    secrets, so request logs (the access key id is in every signed request) and stored error
    messages never show them."""
    env = {"AWS_ACCESS_KEY_ID": "AKIAENVPLANTED0001", "AWS_SECRET_ACCESS_KEY": "env-planted-secret-0001",
           "AWS_SESSION_TOKEN": "env-planted-session-token-0001"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = Store(f"s3://{s3_server['bucket']}/redaction-env",
                  {"client_kwargs": s3_server["storage_options"]["client_kwargs"]})  # no credentials here
    bad = make_receipt(store, "camp", "s1", "v1", status="failed",
                       error_message=f"denied for {env['AWS_ACCESS_KEY_ID']} with {env['AWS_SESSION_TOKEN']}")
    stored = store.write_receipt(bad)
    store.index.commit([stored])
    assert len(log_records) > 20, "expected request logs to check"
    texts = [r.getMessage() for r in log_records] + [stored["error_message"]]
    leaks = {value for text in texts for value in env.values() if value in text}
    assert not leaks, leaks


def test_public_options_filter_nested_options_too():
    from catalog import public_options

    opts = {"key": "AKIA1234567", "anon": False,
            "client_kwargs": {"endpoint_url": "http://user:pw@minio:9000", "region_name": "eu-west-1",
                              "aws_access_key_id": "AKIA-nested", "aws_secret_access_key": "nested-secret",
                              "aws_session_token": "nested-token"},
            "config_kwargs": {"retries": {"max_attempts": 1}, "signature_version": "s3v4"},
            "s3_additional_kwargs": {"SSECustomerKey": "customer-key-bytes"}}
    assert public_options(opts) == {
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "signature_version": "s3v4"},
        "s3_additional_kwargs": {},
    }


@pytest.mark.parametrize("retries, object_store_retries", [
    ({"max_attempts": 2}, "2"),  # botocore's client-config max_attempts counts the retries only
    ({"total_max_attempts": 3}, "2"),  # total_max_attempts counts the first try too
    ({"total_max_attempts": 1, "max_attempts": 5}, "0"),  # and wins when both are given
])
def test_retry_settings_mean_the_same_to_delta_and_stay_as_given(s3_server, retries, object_store_retries):
    given = {**s3_server["storage_options"], "config_kwargs": {"retries": retries}}
    as_given = pickle.loads(pickle.dumps(given))
    store = Store(f"s3://{s3_server['bucket']}/retries", given)
    store.put_blob(b"clip", ext="mp4")  # botocore has built its client from the settings
    assert store.root.delta_storage_options["max_retries"] == object_store_retries
    assert given == as_given, "the caller's settings are not rewritten"
    assert store.root.redacted_options["config_kwargs"] == {"retries": retries}, "nor the store's own"
