"""Fixtures the real-stack worker tests share. A module that uses `client` or `jobstore` defines its own `svc`
(the running Service it wants: settings differ per module)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from service_helpers import make_weights

from workers.jobstore import JobStore


@pytest.fixture(scope="module")
def weights(tmp_path_factory, default_weights) -> Path:
    """The default models plus a second predictor (service_helpers.make_weights), per module."""
    return make_weights(tmp_path_factory.mktemp("weights"), default_weights)


@pytest.fixture(scope="module")
def clips_root(tmp_path_factory) -> Path:
    """Where a module's generated clips live (its service's allowed path root)."""
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def client(svc):
    """An HTTP client for the module's service API."""
    with httpx.Client(base_url=svc.api_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def jobstore(svc):
    """The module's service job store (its Redis)."""
    st = JobStore.from_url(svc.redis_url)
    yield st
    st.r.close()
