"""Shared test options: tests marked ``network`` need downloads and are skipped unless asked for."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-network", action="store_true", help="run tests that download weights or data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-network"):
        return
    skip = pytest.mark.skip(reason="needs a network download; run with --run-network")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)
