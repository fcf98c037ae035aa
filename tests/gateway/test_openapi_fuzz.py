"""The served OpenAPI document against the server, fuzzed (schemathesis): every operation,
once per role, bounded to a few minutes, with the checks not_a_server_error,
status_code_conformance, content_type_conformance, response_schema_conformance and
response_headers_conformance. Real stack: real Ray, real redis-server, real HTTP.

``GET /v1/feed`` is left out: it is an endless stream, which a fuzzer's request can only
time out on; tests/gateway/test_ops.py and test_contract.py test it.

HEXBOOK_FUZZ_EXAMPLES (default 20) sets the cases per operation, HEXBOOK_FUZZ_ROLES the
roles (default operator: every operation is open to it, the widest surface) and
HEXBOOK_FUZZ_PHASES schemathesis' phases (default examples, coverage and fuzzing);
``make soak`` runs all four roles with 100 cases each, in every phase (stateful too).
A failure prints the seed, and ``HEXBOOK_FUZZ_SEED=N`` replays it. Each run draws a new
seed otherwise, so the cases differ from run to run."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from actors.api import Hexbook

pytestmark = pytest.mark.integration
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    # The fuzzer is one client sending as fast as it can: keep it from only meeting 429s.
    return {"rate_per_address": 1e6, "rate_per_key": 1e6, "max_body_bytes": 64 * 1024}


ROLES = os.environ.get("HEXBOOK_FUZZ_ROLES", "operator").split(",")
PHASES = os.environ.get("HEXBOOK_FUZZ_PHASES", "examples,coverage,fuzzing")


@pytest.mark.parametrize("role", ROLES)
def test_every_operation_keeps_its_documented_contract(
    base: str,
    keys: dict[str, str],
    stack: tuple[str, Hexbook, FastAPI],
    role: str,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("HEXBOOK_FUZZ_SEED") or random.randrange(1 << 30))
    examples = os.environ.get("HEXBOOK_FUZZ_EXAMPLES", "20")
    headers = [] if role == "anonymous" else ["-H", f"Authorization: Bearer {keys[role]}"]
    command = [str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--checks", CHECKS]
    command += ["--max-examples", examples, "--seed", str(seed), "--exclude-path", "/v1/feed"]
    command += ["--workers", "1", "--request-timeout", "30", "--output-truncate", "false"]
    command += ["--phases", PHASES]
    run = subprocess.run(  # in tmp_path: schemathesis keeps a cache where it runs
        command + headers, capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"role {role}, seed {seed}:\n{out[-6000:]}"
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    tested = re.search(r"Tested: (\d+)", out)
    assert selected and tested, out[-3000:]
    assert int(tested.group(1)) == int(selected.group(1)) == int(selected.group(2)) - 1, out
