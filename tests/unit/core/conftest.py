"""Stores for the state tests: the local backend, and S3 on a moto server in this process (127.0.0.1, any port)."""

import http.client
import http.server
import threading
import uuid
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from umc_infra.settings import Settings
from umc_infra.state.aws import AwsClient
from umc_infra.state.s3 import S3Store
from umc_infra.state.store import LocalStore, StateStore

REGION = "eu-west-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_settings(endpoint: str, bucket: str, **more) -> Settings:
    return Settings(backend="s3", state_bucket=bucket, s3_endpoint=endpoint, s3_region=REGION,
                    s3_access_key_id="testing", s3_secret_access_key="testing", state_kms_key_id=None,
                    **more)  # fmt: skip


_admins: dict[tuple[str, str], object] = {}


def client_for(endpoint: str, service: str = "s3", *, timeout_s: float = 5.0) -> AwsClient:
    """The state backend's client of ``service``, as a run makes it."""
    return AwsClient(s3_settings(endpoint, "umc-unit-any", state_timeout_s=timeout_s), service)


def admin_for(endpoint: str, service: str = "s3"):
    """A boto3 client per endpoint for the tests' own calls (a bucket, a table, an object's headers): a second
    opinion."""
    if (endpoint, service) not in _admins:
        import boto3

        _admins[endpoint, service] = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        ).client(service, endpoint_url=endpoint)
    return _admins[endpoint, service]


def new_bucket(endpoint: str) -> str:
    bucket = f"umc-unit-{uuid.uuid4().hex[:12]}"
    admin_for(endpoint).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return bucket


@pytest.fixture
def s3_store(moto_endpoint) -> S3Store:
    return S3Store(client_for(moto_endpoint), new_bucket(moto_endpoint))


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path) -> StateStore:
    """Each test runs on both backends."""
    if request.param == "local":
        return LocalStore(tmp_path / "state")
    return request.getfixturevalue("s3_store")


class HeaderDroppingProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to ``upstream`` without the ``dropped`` request headers.

    It stands for an S3-compatible service that ignores conditional writes (``If-None-Match``, ``If-Match``).
    """

    def __init__(self, upstream: str, *, dropped: frozenset[str]) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        target = (host, int(port))
        skipped = dropped | {"connection", "expect", "transfer-encoding"}

        class Forward(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skipped}
                upstream = http.client.HTTPConnection(*target, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in {"connection", "transfer-encoding", "content-length"}:
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", response.getheader("Content-Length") or "0")
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "HeaderDroppingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
