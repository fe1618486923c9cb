from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import manifests as m  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary; a missing helm fails under scripts/check-deploy.sh
    (HAINA_REQUIRE_HELM=1) and skips elsewhere."""
    h = m.helm_binary()
    if h is None:
        if os.environ.get("HAINA_REQUIRE_HELM") == "1":
            pytest.fail("helm is required but was not found")
        pytest.skip("helm not found: run scripts/check-deploy.sh, or set HAINA_HELM")
    return h


@pytest.fixture(params=sorted(m.RENDERINGS), scope="session")
def rendering(request) -> tuple[str, list[dict]]:
    """(file name, objects) of each committed manifest in deploy/kubernetes."""
    path = m.MANIFESTS / request.param
    assert path.exists(), f"{path} is missing: run scripts/check-deploy.sh --update"
    return request.param, m.load_file(path)


@pytest.fixture
def docs(rendering) -> list[dict]:
    return rendering[1]
