"""Shared fixtures. Each real service has its own module under tests/fixtures/ and is
imported here by name, so a test asks for `s3_server`, `ray_cluster` or `mlflow_server`."""

import os

import pytest

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from tests.fixtures.mlflow_server import mlflow_server  # noqa: F401
from tests.fixtures.ray_cluster import (  # noqa: F401
    MODULE_ORDER,
    ray_cluster,
    ray_head,
    release_shared,
    smoke_shards,
)
from tests.fixtures.s3 import (  # noqa: F401
    _moto_threaded,
    finalize_pyarrow_s3,
    s3_server,
    s3_strict_server,
)

# Modules that set the environment or the working directory their Ray workers inherit before
# asking for `ray_cluster`: they start a cluster of their own anyway, so they run last of those.
RAY_OF_THEIR_OWN = (
    "integration/test_readme_commands.py",
    "integration/test_readme_own_data.py",
)


SHARED = ("ray_cluster", "ray_head")  # module fixtures that can hand over to the next module


@pytest.hookimpl(trylast=True)  # after `-k` / `-m` deselection: the modules that will run
def pytest_collection_modifyitems(session, config, items):
    """The modules that ask for `ray_cluster` run one after the other, from where the first of
    them was, so that each can hand its cluster to the next (tests/fixtures/ray_cluster.py);
    the same for `ray_head`. The tests' order inside a module, and every other module's
    place, stay as collected."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def shared(mod: str) -> str | None:
        wanted = {name for item in modules[mod] for name in item.fixturenames}
        return next((name for name in SHARED if name in wanted), None)

    groups: dict[str, list[str]] = {}
    for mod in modules:
        if shared(mod):
            groups.setdefault(shared(mod), []).append(mod)
    groups.get("ray_cluster", []).sort(key=lambda m: m.endswith(RAY_OF_THEIR_OWN))  # stable
    order = []
    for mod in modules:
        group = shared(mod)
        if group is None:
            order.append(mod)
        elif mod == groups[group][0]:
            order += groups[group]
    items[:] = [item for mod in order for item in modules[mod]]
    config.stash[MODULE_ORDER] = [
        (mod, {name for item in modules[mod] for name in item.fixturenames}) for mod in order
    ]


def pytest_sessionfinish(session, exitstatus):
    # a run stopped early (-x, Ctrl+C) may leave the cluster or head kept for a next module
    release_shared()


def pytest_unconfigure(config):
    # pyarrow's S3 client must be shut down before the interpreter exits, or it can abort.
    finalize_pyarrow_s3()
