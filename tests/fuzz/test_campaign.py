"""Runs of the seeded campaign of ``make fuzz`` (tests/fuzz/campaign.py) as tests.

The default run sends 3,000 requests from one worker, so the server sees them in the same order every time.
The parallel run (marked ``fuzz``, deselected by default: ``pytest -m fuzz``) is ``make fuzz``'s own campaign,
whose interleaving varies from run to run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fuzz.campaign import run


def _assert_clean(report: dict[str, Any], requests: int) -> None:
    problems = json.dumps({key: report.get(key) for key in ("reproducers", "server_tracebacks")}, indent=1)
    assert report["requests"] == requests, report
    assert report["5xx"] == 0 and report["timeouts"] == 0 and report["connection_errors"] == 0, problems
    assert report["alive"], problems
    assert report["status"].get("200", 0) > requests // 10 and report["status"].get("400", 0) > requests // 10
    assert report["status"].get("413", 0) >= 2, report["status"]  # the 105 MB bodies


def test_a_short_seeded_campaign_finds_no_server_error() -> None:
    _assert_clean(run(seed=7, requests=3000, workers=1, time_limit=60.0), 3000)


def test_a_short_seeded_campaign_against_a_server_with_a_token_finds_no_server_error() -> None:
    report = run(seed=11, requests=2000, workers=1, time_limit=60.0, token="fuzz-token-0123456789abcdef")
    _assert_clean(report, 2000)
    assert report["status"].get("401", 0) > 100, report["status"]  # the requests with a wrong token or none


@pytest.mark.fuzz
def test_the_parallel_campaign_of_make_fuzz_finds_no_server_error() -> None:
    _assert_clean(run(seed=20261207, requests=20_000, workers=8, time_limit=300.0), 20_000)
