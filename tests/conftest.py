from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"
API_DIR = Path(__file__).parent / "api"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parents = Path(str(item.fspath)).parents
        if INTEGRATION_DIR in parents:
            item.add_marker(pytest.mark.integration)
        if API_DIR in parents:
            # With pytest-xdist (`make test-fast`, `--dist loadgroup`): every tests/api test in
            # one worker, so one session Postgres and Temporal server serve them all.
            item.add_marker(pytest.mark.xdist_group("api"))
