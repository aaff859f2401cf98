"""Shared test configuration: GPU tests skip cleanly on machines without CUDA; free local ports."""

import random
import socket

import pytest
import torch


def free_port(within: tuple[int, int] | None = None) -> int:
    """A free local port: any, or one inside ``within``."""
    candidates = random.sample(range(within[0], within[1] + 1), 200) if within else [0]
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError(f"no free port in {within}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
