"""The state backend's own S3 and DynamoDB calls (umc_infra.state.aws): against moto, and against a local HTTP
server that answers what a test tells it (errors, throttling, silence) and keeps what it received."""

import hashlib
import http.server
import logging
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import SecretStr

from tests.unit.core.conftest import REGION, admin_for, client_for, new_bucket, s3_settings
from umc_infra import StateBackendError
from umc_infra.state import aws
from umc_infra.state.aws import AwsClient, dynamodb, s3_keys
from umc_infra.state.s3 import S3Store


class Scripted:
    """An HTTP server on 127.0.0.1: each request gets the next ``(status, body)`` of ``replies`` (the last repeats)."""

    def __init__(self, replies: list[tuple[int, bytes]], *, etag: bool = True) -> None:
        self.replies = replies
        self.received: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": body})  # fmt: skip
                status, reply = outer.replies[min(len(outer.received), len(outer.replies)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                if etag:
                    self.send_header("ETag", '"e1"')
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Scripted":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backoffs(monkeypatch) -> list[tuple[int, bool]]:
    """The retries' backoffs (attempt, throttled), recorded instead of slept."""
    seen: list[tuple[int, bool]] = []
    monkeypatch.setattr(
        aws.AwsClient, "_back_off", lambda self, attempt, *, throttled: seen.append((attempt, throttled))
    )
    return seen


ROOT = Path(__file__).resolve().parents[3]
S3_ERROR = b"<?xml version='1.0'?><Error><Code>%s</Code><Message>m</Message></Error>"


def test_objects_round_trip_on_moto_and_a_list_reads_every_page(moto_endpoint):
    bucket = new_bucket(moto_endpoint)
    s3 = client_for(moto_endpoint)
    for name in ("a/one", "a/two", "a/three", "a/four", "a/five", "b/six"):
        assert s3.request("PUT", f"/{bucket}/{name}", body=name.encode()).ok
    assert sorted(s3_keys(s3, bucket, "a/", page_size=2)) == ["a/five", "a/four", "a/one", "a/three", "a/two"]
    # the second opinion: boto3 sees what these calls wrote
    assert admin_for(moto_endpoint).get_object(Bucket=bucket, Key="a/two")["Body"].read() == b"a/two"
    got = s3.request("GET", f"/{bucket}/a/one")
    assert (got.ok, got.body, got.headers["ETag"].startswith('"')) == (True, b"a/one", True)
    missing = s3.request("GET", f"/{bucket}/a/none")
    assert (missing.ok, missing.status, missing.code) == (False, 404, "NoSuchKey")
    no_bucket = s3.request("HEAD", "/umc-unit-no-such-bucket")
    assert (no_bucket.status, no_bucket.code) == (404, "404")  # a HEAD reply has no body
    with pytest.raises(StateBackendError, match="refused listing 'a/': NoSuchBucket"):
        list(s3_keys(s3, "umc-unit-no-such-bucket", "a/"))


def test_dynamodb_items_and_tables_on_moto(moto_endpoint):
    admin = admin_for(moto_endpoint, "dynamodb")
    admin.create_table(TableName="umc-unit-locks", KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
                       AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
                       BillingMode="PAY_PER_REQUEST")  # fmt: skip
    admin.put_item(TableName="umc-unit-locks", Item={"LockID": {"S": "b/k"}, "Info": {"S": '{"ID": "1"}'}})
    db = client_for(moto_endpoint, "dynamodb")

    def get(key: str) -> dict:
        return dynamodb(db, "GetItem", {"TableName": "umc-unit-locks", "Key": {"LockID": {"S": key}}})

    assert get("b/k")["Item"] == {"LockID": {"S": "b/k"}, "Info": {"S": '{"ID": "1"}'}}
    assert "Item" not in get("b/none")
    assert dynamodb(db, "DescribeTable", {"TableName": "umc-unit-locks"})["Table"]["TableStatus"] == "ACTIVE"
    with pytest.raises(StateBackendError, match="refused DescribeTable on table 'nope': ResourceNotFoundException"):
        dynamodb(db, "DescribeTable", {"TableName": "nope"})


@pytest.mark.parametrize("call", ["s3-list", "s3-conditional-put", "dynamodb"])
def test_the_signature_is_of_the_request_as_it_arrived(call, tmp_path, monkeypatch):
    """The server recomputes the signature from what it received (path, query, headers, body) with the key.

    A ``~/.netrc`` with a default entry is in place: requests would put its Basic auth in place of the signature.
    """
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password netrc-password-1\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    service = call.split("-")[0]
    with Scripted([(200, b"<ListBucketResult/>" if service == "s3" else b"{}")]) as server:
        api = client_for(server.endpoint, service)
        if call == "s3-list":
            list(s3_keys(api, "bucket-1", "deployments/a b/~x", page_size=7))
        elif call == "s3-conditional-put":
            store = S3Store(api, "bucket-1", kms_key_id="alias/umc state")
            assert store.replace("deployments/a/record.json", b'{"state": "active"}', version='"e0"') == '"e1"'
        else:
            dynamodb(api, "GetItem", {"TableName": "t", "Key": {"LockID": {"S": "x"}}})
    got = server.received[0]
    headers = got["headers"]
    assert "netrc-password-1" not in str(headers) and headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
    if call == "s3-conditional-put":
        assert (headers["If-Match"], headers["x-amz-server-side-encryption-aws-kms-key-id"]) == (
            '"e0"',
            "alias/umc state",
        )
        assert got["body"] == b'{"state": "active"}'
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "host" in signed and "x-amz-date" in signed
    if service == "s3":  # S3 checks the body against its signed hash
        assert headers["X-Amz-Content-SHA256"] == hashlib.sha256(got["body"]).hexdigest()
    again = AWSRequest(method=got["method"], url=server.endpoint + got["path"], data=got["body"],
                       headers={k: v for k, v in headers.items() if k.lower() in signed})  # fmt: skip
    again.context["timestamp"] = headers["X-Amz-Date"]
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(Credentials("testing", "testing"), service, REGION)
    expected = signer.signature(signer.string_to_sign(again, signer.canonical_request(again)), again)
    assert headers["Authorization"].endswith(f"Signature={expected}")
    # the control: another key gives another signature
    other = (S3SigV4Auth if service == "s3" else SigV4Auth)(Credentials("testing", "other"), service, REGION)
    assert not headers["Authorization"].endswith(
        f"Signature={other.signature(other.string_to_sign(again, other.canonical_request(again)), again)}"
    )


def test_5xx_and_throttling_are_retried_and_then_succeed(backoffs):
    throttled = b'{"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "slow down"}'
    with Scripted([(503, S3_ERROR % b"SlowDown"), (400, throttled), (200, b"{}")]) as server:
        assert dynamodb(client_for(server.endpoint, "dynamodb"), "GetItem", {"TableName": "t"}) == {}
    assert len(server.received) == 3 and backoffs == [(1, True), (2, True)]


def test_a_refusal_is_not_retried_and_names_its_code(backoffs):
    with Scripted([(412, S3_ERROR % b"PreconditionFailed")]) as server:
        refused = client_for(server.endpoint).request("PUT", "/b/k", body=b"1", headers={"If-None-Match": "*"})
    assert (refused.ok, refused.code, refused.status) == (False, "PreconditionFailed", 412)
    assert len(server.received) == 1 and backoffs == []
    assert server.received[0]["headers"]["If-None-Match"] == "*"


def test_errors_after_the_last_attempt(backoffs):
    with Scripted([(500, b"not xml, not json")]) as server:
        failed = client_for(server.endpoint).request("GET", "/b/k")
    assert (failed.code, len(server.received), backoffs) == ("500", 3, [(1, False), (2, False)])


@pytest.fixture
def silent() -> Iterator[str]:
    """An endpoint that accepts connections (the kernel does) and never answers."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        yield f"http://127.0.0.1:{hung.getsockname()[1]}"


def test_an_endpoint_that_never_answers_is_unreachable_after_three_timeouts(silent, backoffs):
    began = time.monotonic()
    with pytest.raises(StateBackendError, match=r"S3 state backend unreachable at .* \(ReadTimeout\)"):
        client_for(silent, timeout_s=0.3).request("GET", "/b/k")
    assert backoffs == [(1, False), (2, False)]
    assert 0.9 <= time.monotonic() - began < 5


def test_no_credentials_is_unreachable_and_nothing_is_sent(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with Scripted([(200, b"")]) as server:
        settings = s3_settings(server.endpoint, "umc-unit-any").model_copy(
            update={"s3_access_key_id": None, "s3_secret_access_key": None}
        )
        with pytest.raises(StateBackendError, match="no AWS credentials"):
            AwsClient(settings, "s3").request("GET", "/b/k")
    assert server.received == []


def test_the_key_and_token_stay_out_of_errors_reprs_and_logs(silent, monkeypatch, caplog, backoffs):
    """The unreachable path, with every logger at DEBUG: the error, its whole traceback, what it hangs on, the
    client's repr and state, and the log hold neither the secret key nor (but in botocore's own DEBUG record of
    the canonical request, as with boto3) the session token."""
    key, token = "canary-aws-secret-4f1c9e", "canary-aws-token-77ab02"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    settings = s3_settings(silent, "umc-unit-any", state_timeout_s=0.2).model_copy(
        update={"s3_secret_access_key": SecretStr(key)}
    )
    api = AwsClient(settings, "s3")
    with pytest.raises(StateBackendError) as failed:
        S3Store(api, "umc-unit-any").put("k/x", b"1")
    error = failed.value
    assert error.__context__ is None and error.__cause__ is None  # no requests exception (and request) behind it
    shown = "".join(traceback.format_exception(error)) + repr(error) + repr(api) + repr(vars(api))
    for secret in (key, token):
        assert secret not in shown
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert key not in logged
    assert token not in "\n".join(r.getMessage() for r in caplog.records if r.name != "botocore.auth")


BAD_ANSWERS = {  # what the endpoint answers, the call, what the error says
    "a 404 without S3's NoSuchKey (not the bucket answering)": (
        404, b"", lambda api: S3Store(api, "umc-unit-any").get("k/x"), "refused 'k/x': 404"),
    "a proxy's page for a listing": (
        200, b"<html>a proxy's page</html>", lambda api: S3Store(api, "umc-unit-any").list("deployments"),
        "something other than a ListBucketResult"),
    "a proxy's page for DynamoDB": (
        200, b"<html>a proxy's page</html>", lambda api: dynamodb(api, "GetItem", {"TableName": "t"}),
        "something other than a JSON object"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_ANSWERS, ids=list(BAD_ANSWERS))
def test_bad_answers_are_state_backend_errors(case, backoffs):
    status, body, call, message = BAD_ANSWERS[case]
    with Scripted([(status, body)]) as server, pytest.raises(StateBackendError, match=message):
        call(client_for(server.endpoint))


def test_a_write_without_an_etag_is_a_state_backend_error():
    with Scripted([(200, b"")], etag=False) as server, pytest.raises(StateBackendError, match="without an ETag"):
        S3Store(client_for(server.endpoint), "umc-unit-any").create("k/x", b"1")


def test_a_profile_that_is_not_there_is_a_state_backend_error(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    settings = s3_settings("http://127.0.0.1:9", "umc-unit-any").model_copy(
        update={"s3_access_key_id": None, "s3_secret_access_key": None}
    )
    with pytest.raises(StateBackendError, match=r"no AWS credentials \(ProfileNotFound\)") as failed:
        AwsClient(settings, "s3").request("GET", "/b/k")
    assert failed.value.__context__ is None


@pytest.mark.parametrize("from_environment", [True, False])
def test_temporary_credentials_from_the_environment_send_their_session_token(monkeypatch, from_environment):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing" if from_environment else "another-key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-1")
    with Scripted([(200, b"{}")]) as server:
        dynamodb(client_for(server.endpoint, "dynamodb"), "GetItem", {"TableName": "t"})
    sent = server.received[0]["headers"]
    assert sent.get("X-Amz-Security-Token") == ("session-token-1" if from_environment else None)


def test_a_run_s_state_calls_load_no_boto3(moto_endpoint):
    """The state backend's calls in a fresh process: no boto3, and no botocore service model (what cost 40 MB)."""
    bucket = new_bucket(moto_endpoint)
    code = f"""
import sys
from umc_infra.settings import Settings
from umc_infra.state.aws import AwsClient
from umc_infra.state.s3 import S3Store
settings = Settings(backend="s3", state_bucket={bucket!r}, s3_endpoint={moto_endpoint!r}, s3_region={REGION!r},
                    s3_access_key_id="testing", s3_secret_access_key="testing")
store = S3Store(AwsClient(settings, "s3"), {bucket!r})
store.put("k/x", b"1")
assert store.get("k/x") == b"1" and store.list("k") == ["k/x"]
print(sorted(m for m in sys.modules if m == "boto3" or m.startswith(("boto3.", "botocore.client", "botocore.loaders"))))
"""
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert found.stdout.strip() == "[]", found.stdout
