"""A local S3 endpoint for tests: moto's threaded server on a free port, plus a fresh bucket.

Import the `s3` fixture into a test module (`from s3_server import s3  # noqa: F401`). It yields
an `S3Endpoint` whose `storage_options` go straight to `Storage` / fsspec, so the code under
test runs the real s3fs client against HTTP, with no AWS account and no network.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

ACCESS_KEY = "castex-test-access-key"
SECRET_KEY = "castex-test-secret-key-do-not-log"


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    bucket: str

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"}}

    def uri(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path}".rstrip("/")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    """Module-scoped moto server (start ~0.5 s) with one empty bucket."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = S3Endpoint(f"http://{host}:{port}", f"castex-{uuid.uuid4().hex[:8]}")
    client = boto3.client("s3", endpoint_url=endpoint.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    client.create_bucket(Bucket=endpoint.bucket)
    try:
        yield endpoint
    finally:
        server.stop()
