"""Shared fixtures. Each real service has its own module under tests/fixtures/ and is
imported here by name, so a test asks for `s3_server`, `ray_cluster` or `mlflow_server`."""

import os

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from tests.fixtures.mlflow_server import mlflow_server  # noqa: E402, F401
