"""Shared fixtures. Each real service has its own module under tests/fixtures/ and is
imported here by name, so a test asks for `s3_server`, `ray_cluster` or `mlflow_server`."""

import os

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from tests.fixtures.mlflow_server import mlflow_server  # noqa: F401
from tests.fixtures.ray_cluster import ray_cluster, ray_head, smoke_shards  # noqa: F401
from tests.fixtures.s3 import (  # noqa: F401
    _moto_threaded,
    finalize_pyarrow_s3,
    s3_server,
    s3_strict_server,
)


def pytest_unconfigure(config):
    # pyarrow's S3 client must be shut down before the interpreter exits, or it can abort.
    finalize_pyarrow_s3()
