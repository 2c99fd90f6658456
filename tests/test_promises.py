"""The README's "What a client sees" table, as a test matrix: every row names the tests that fail
if a server stops keeping that promise, and this file fails if a row has none or names a test
that does not exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from servelab.paths import REPO

# The start of each row's first cell, and the tests that check its promise.
PROMISES = {
    '`POST /` with the input': [
        'test_behaviour.py::test_every_caller_gets_its_own_answer',
        'test_behaviour.py::test_json_body_is_accepted',
        'test_variants.py::test_concurrent_requests_each_get_the_embedding_of_their_own_input',
    ],
    'body not UTF-8': [
        'test_behaviour.py::test_bad_requests_get_a_clear_status_and_the_next_one_is_served',
        'test_abuse.py::test_bad_json_gets_400_with_a_json_body_and_a_request_id_on_every_variant',
        'test_variants.py::test_fill_mask_answers_like_a_direct_call_and_rejects_bad_inputs',
    ],
    "input longer than the model's maximum": [
        'test_abuse.py::test_a_long_input_is_truncated_to_the_models_maximum',
    ],
    'body over `--max-body-bytes`': [
        'test_abuse.py::test_every_urllib_client_reads_its_413',
        'test_behaviour.py::test_a_chunked_body_over_the_limit_gets_413_without_being_read_whole',
    ],
    'body not received whole': [
        'test_abuse.py::test_a_trickled_body_gets_408_and_does_not_hold_up_others',
    ],
    'headers over 16 KiB': [
        'test_abuse.py::test_headers_over_the_limit_get_431_and_the_server_goes_on',
    ],
    'more than `--max-connections`': [
        'test_abuse.py::test_connections_past_the_limit_get_a_json_503_and_are_closed',
        'test_abuse.py::test_a_client_still_sending_its_body_reads_its_503_at_the_connection_limit',
    ],
    'a kept-alive connection idle': [
        'test_abuse.py::test_a_connection_idle_past_common_client_pools_expiry_is_still_open',
    ],
    'the pipeline raises': [
        'test_behaviour.py::test_a_failing_input_fails_alone_and_the_loop_survives',
    ],
    '`--max-queue N`': [
        'test_breaker.py::test_max_queue_sheds_the_excess_at_once_and_never_holds_more_than_the_limit',
    ],
    '`slo_aware.py`: predicted to be answered later': [
        'test_slo_aware.py::test_admission_refuses_exactly_the_requests_predicted_to_miss',
        'test_slo_aware.py::test_a_request_that_can_no_longer_make_it_gets_504_and_is_not_computed',
    ],
    'not started within `--queue-timeout-ms`': [
        'test_breaker.py::test_queue_timeout_answers_504_on_time_while_the_model_is_busy_and_never_computes_it',
        'test_jobs.py::test_a_request_already_late_when_queued_gets_504_at_once',
    ],
    'client disconnects': [
        'test_breaker.py::test_requests_whose_clients_left_are_never_computed',
        'test_abuse.py::test_a_body_shorter_than_its_content_length_then_close_is_a_quiet_499',
    ],
    'server shutting down': [
        'test_breaker.py::test_waiting_requests_get_503_when_the_server_shuts_down',
        'test_variants.py::test_sigterm_under_load_answers_everyone_and_exits_in_seconds',
        'test_behaviour.py::test_shutdown_listens_on_while_connections_come_in_then_closes_within_a_bound',
    ],
    'the model loop died': [
        'test_behaviour.py::test_when_the_model_loop_dies_health_and_requests_answer_503_at_once',
    ],
}


def readme_rows() -> list[str]:
    text = (REPO / "README.md").read_text()
    table = text.split("### What a client sees", 1)[1].split("\n\n", 2)[1]
    return [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]


def test_every_row_of_the_table_has_its_tests():
    rows = readme_rows()
    assert len(rows) >= 10
    for row in rows:
        assert [key for key in PROMISES if row.startswith(key)], f"README row without tests: {row[:60]}"
    for key in PROMISES:
        assert [row for row in rows if row.startswith(key)], f"no README row starts with {key!r}"


@pytest.mark.parametrize("test_id", sorted({t for tests in PROMISES.values() for t in tests}))
def test_each_named_test_exists(test_id):
    file, name = test_id.split("::")
    tree = ast.parse((Path(__file__).parent / file).read_text())
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert name in names, f"{test_id} does not exist"
    assert re.fullmatch(r"test_\w+", name)
