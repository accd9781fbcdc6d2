"""Signed calls to S3 and DynamoDB, without loading botocore's service models.

A run makes a handful of calls to the state backend: get, put and delete an object, list a prefix, and read
Terraform's lock item. A boto3 client for them loads the whole service model of S3 (or of DynamoDB), and a run
made several: about 40 MB in the run's process (its peak went from 105 to 67 MB without them), and half a second
of CPU each time a client was made. These calls need only
botocore's credential chain and its Signature Version 4 signer, and :mod:`requests` (which already carries the
Vault calls) for HTTP: proxies from ``HTTPS_PROXY``/``NO_PROXY``, and ``AWS_CA_BUNDLE`` as boto3 takes it.

Each request has the settings' state timeout to connect and to read, and is tried :data:`ATTEMPTS` times when
the endpoint cannot be reached, answers 5xx or 429, or throttles (as boto3's "standard" retry mode, with its
backoff scales). An error reply is returned (:class:`AwsReply` with the service's error code) for the caller to judge;
an endpoint that cannot be reached after the last attempt, or no credentials, is a ``StateBackendError``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from umc_infra.errors import StateBackendError
from umc_infra.settings import Settings

ATTEMPTS = 3
"""Tries of one request (the first and two retries), as boto3's standard retry mode."""
MAX_BACKOFF_S = 20.0
_RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
_THROTTLED = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException", "InternalError",
})  # fmt: skip
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
"""The namespace of S3's XML replies. They come from the configured state endpoint only, and are parsed as botocore
parses them (``xml.etree``); expat >= 2.4.1 refuses entity amplification (billion laughs)."""


class AwsReply:
    """A reply of the service: ``code`` is the error code of an error reply (the status, for one without a body)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.code = "" if status < 300 else _error_code(status, body)

    def __repr__(self) -> str:
        return f"AwsReply({self.status}{f', {self.code}' if self.code else ''})"

    @property
    def ok(self) -> bool:
        """Whether the call succeeded (2xx)."""
        return self.status < 300


class AwsClient:
    """Signed HTTP calls to one service of the state backend (``s3`` or ``dynamodb``); safe to share by threads.

    The endpoint is the settings' S3 endpoint (both services, path-style buckets, as Terraform's S3 backend is
    configured), else AWS's regional endpoint in the commercial partition (``<service>.<region>.amazonaws.com``;
    elsewhere, set the endpoint). Credentials are the settings' S3 key, else the usual AWS ways
    (environment, profile, container or instance role), looked up once.
    """

    def __init__(self, settings: Settings, service: str) -> None:
        self.service = service
        self.region = settings.s3_region
        self.endpoint = (settings.s3_endpoint or f"https://{service}.{self.region}.amazonaws.com").rstrip("/")
        self.timeout_s = settings.state_timeout_s
        self._settings_key = settings.s3_access_key_id, settings.s3_secret_access_key
        self._credentials: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"AwsClient({self.service!r}, endpoint={self.endpoint!r})"

    def _frozen_credentials(self) -> Any:
        from botocore.exceptions import BotoCoreError

        with self._lock:
            failed = ""
            try:
                if self._credentials is None:
                    self._credentials = self._find_credentials()
                if self._credentials is not None:
                    return self._credentials.get_frozen_credentials()
            except BotoCoreError as exc:  # a profile that is not there, a role or SSO token that cannot be had
                failed = type(exc).__name__
            # raised outside the handler: no botocore exception (or what it holds) hangs on the error
            raise self._unreachable(
                f"no AWS credentials ({failed or 'none found'}): set UMC_S3_ACCESS_KEY_ID and "
                "UMC_S3_SECRET_ACCESS_KEY, or an AWS profile or role"
            )

    def _find_credentials(self) -> Any:
        key, secret = self._settings_key
        if key and secret is not None:
            from botocore.credentials import Credentials

            # the session token of temporary credentials in the environment goes with their key
            token = os.environ.get("AWS_SESSION_TOKEN") if key == os.environ.get("AWS_ACCESS_KEY_ID") else None
            return Credentials(key, secret.get_secret_value(), token)
        import botocore.session

        return botocore.session.Session().get_credentials()

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:  # one per thread: a requests session is not made to be shared
            import requests

            session = self._local.session = requests.Session()
            # The request is signed: no Basic auth from ~/.netrc may replace the signature (nor reach the endpoint).
            session.auth = _as_signed
        return session

    def request(self, method: str, path: str = "/", *, query: Mapping[str, str] | None = None, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> AwsReply:  # fmt: skip
        """One call, signed and retried: the service's reply (an error reply too, after the retries).

        Raises:
            StateBackendError: No reply after the last attempt, or no credentials.
        """
        import requests
        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = self.endpoint + quote(path, safe="/~")
        if query:
            url += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="~")
        signer = S3SigV4Auth if self.service == "s3" else SigV4Auth
        # Per request: requests lets REQUESTS_CA_BUNDLE win over a session's own ``verify``.
        verify: str | bool = os.environ.get("AWS_CA_BUNDLE") or True
        failed = ""
        for attempt in range(1, ATTEMPTS + 1):
            unsigned = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
            signer(self._frozen_credentials(), self.service, self.region).add_auth(unsigned)
            signed = dict(unsigned.headers.items())
            try:
                reply = self._session().request(method, url, data=body or None, headers=signed, timeout=self.timeout_s,
                                                allow_redirects=False, verify=verify)  # fmt: skip
            except requests.RequestException as exc:
                failed = type(exc).__name__
                if attempt < ATTEMPTS:
                    self._back_off(attempt, throttled=False)
                continue
            response = AwsReply(reply.status_code, reply.headers, reply.content)
            throttled = response.status == 429 or response.code in _THROTTLED
            if attempt == ATTEMPTS or not (throttled or response.status in _RETRIED_STATUS):
                return response
            self._back_off(attempt, throttled=throttled)
        # raised outside the handler: the requests exception, and the signed request it holds, stay behind
        raise self._unreachable(failed)

    def _unreachable(self, reason: str) -> StateBackendError:
        name = "S3" if self.service == "s3" else "DynamoDB"
        return StateBackendError(
            f"{name} state backend unreachable at {self.endpoint} ({reason}); check UMC_S3_ENDPOINT "
            "(AWS_ENDPOINT_URL) and credentials",
            step="store",
        )

    def _back_off(self, attempt: int, *, throttled: bool) -> None:
        """Sleep as boto3's standard mode does before the next attempt.

        A random part of ``scale * 2 ** (attempt - 1)`` seconds; the scale is 1 s after throttling, else 0.05 s
        (0.025 s for DynamoDB).
        """
        scale = 1.0 if throttled else 0.025 if self.service == "dynamodb" else 0.05
        time.sleep(random.random() * min(scale * 2 ** (attempt - 1), MAX_BACKOFF_S))  # noqa: S311 (jitter)


def _as_signed(request: Any) -> Any:
    """The session's auth: the request as it is (signed already)."""
    return request


def _error_code(status: int, body: bytes) -> str:
    """The error code of an S3 (XML) or DynamoDB (JSON) error reply; the status when there is none."""
    text = body.strip()
    try:
        if text.startswith(b"<"):
            node = ElementTree.fromstring(text).find("Code")  # noqa: S314 (see _S3_NS)
            if node is not None and node.text:
                return node.text
        elif text.startswith(b"{"):
            kind = str(json.loads(text).get("__type", ""))
            if kind:
                return kind.rpartition("#")[2]
    except (ValueError, ElementTree.ParseError):
        pass
    return str(status)


def dynamodb(client: AwsClient, operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """One DynamoDB operation (JSON protocol 1.0: ``GetItem``, ``DescribeTable``, ...): its reply.

    Raises:
        StateBackendError: DynamoDB refused it (the message names the operation, the table and the error code),
            or cannot be reached.
    """
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"DynamoDB_20120810.{operation}"}
    reply = client.request("POST", "/", body=json.dumps(request).encode(), headers=headers)
    table = request.get("TableName")
    if not reply.ok:
        raise StateBackendError(
            f"DynamoDB at {client.endpoint} refused {operation} on table {table!r}: {reply.code}", step="store"
        )
    try:
        found = json.loads(reply.body or b"{}")
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise StateBackendError(
            f"DynamoDB at {client.endpoint} answered {operation} on table {table!r} with something other than a "
            "JSON object: is UMC_S3_ENDPOINT an S3 and DynamoDB endpoint?",
            step="store",
        )
    return found


def s3_keys(client: AwsClient, bucket: str, prefix: str, *, page_size: int = 1000) -> Iterator[str]:
    """Every key under ``prefix`` in ``bucket``, a page (ListObjectsV2) at a time.

    Raises:
        StateBackendError: S3 refused the listing, or cannot be reached.
    """
    token: str | None = None
    while True:
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size)}
        if token:
            query["continuation-token"] = token
        reply = client.request("GET", f"/{bucket}", query=query)
        if not reply.ok:
            raise StateBackendError(f"S3 bucket {bucket!r} refused listing {prefix!r}: {reply.code}", step="store")
        try:
            page = ElementTree.fromstring(reply.body)  # noqa: S314 (see _S3_NS)
        except ElementTree.ParseError:
            page = None
        if page is None or not page.tag.endswith("ListBucketResult"):
            raise StateBackendError(
                f"S3 bucket {bucket!r} answered listing {prefix!r} with something other than a ListBucketResult: is "
                "UMC_S3_ENDPOINT an S3 endpoint?",
                step="store",
            )
        for found in page.iter(f"{_S3_NS}Key"):
            yield found.text or ""
        token = page.findtext(f"{_S3_NS}NextContinuationToken")
        if page.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
            return
