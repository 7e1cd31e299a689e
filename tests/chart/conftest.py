"""The chart tests' one helm, shared by every module (it caches what it renders)."""

from __future__ import annotations

import pytest
from chart_tools import helm

from chart.rendering import Helm


@pytest.fixture(scope="session")
def chart_helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm(), tmp_path_factory.mktemp("helm-home"))
