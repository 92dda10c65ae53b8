"""A Prefect API server that stops answering ends the command with a message naming it (exit 3), not a hang; the
train stage's reports to the API are best-effort, so a dead server does not fail (and retry) the training.

Fast: a stand-in ``/health`` served from a thread. tests/flows/test_server_lost.py kills a real server."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time

import httpx
import pytest

from r1lib.ops.api_watch import EXIT_STATUS, ApiReports, api_error, exit_when_api_lost


@pytest.fixture
def health():
    """A /health endpoint on loopback: (its API URL, a function that stops it)."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path.endswith("/health") else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    yield f"http://127.0.0.1:{server.server_address[1]}/api", stop
    with contextlib.suppress(Exception):
        stop()


def test_a_server_that_stops_answering_ends_the_command_naming_it(health, capsys):
    url, stop = health
    exits: list[int] = []
    with exit_when_api_lost(url, outage_s=1.0, poll_s=0.1, exit=exits.append):
        time.sleep(1.5)
        assert exits == [], "the watch ended the command while the server answered"
        stop()
        deadline = time.monotonic() + 10
        while not exits and time.monotonic() < deadline:
            time.sleep(0.05)
    assert exits == [EXIT_STATUS]
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"the Prefect server at {url} has not answered for 1 s (")
    assert "run the same command again" in message and "Traceback" not in message


def test_the_watch_ends_with_the_block(health):
    url, stop = health
    exits: list[int] = []
    with exit_when_api_lost(url, outage_s=0.3, poll_s=0.1, exit=exits.append):
        pass
    stop()
    time.sleep(0.8)
    assert exits == []


def test_reports_to_a_dead_api_are_skipped_after_the_first_failure(health):
    url, stop = health
    calls: list[str] = []

    def report(step: int) -> int:
        calls.append(f"step {step}")
        if step == 2:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return step

    reports = ApiReports(url)
    assert reports(report, 1) == 1
    assert reports(report, 2) is None  # the API failed: no exception reaches the training
    assert reports(report, 3) is None and calls == ["step 1", "step 2"]
    assert reports.failed and "Connection refused" in reports.failed

    stop()  # a server already gone: the report is not even tried (no minute of client retries)
    quiet = ApiReports(url)
    assert quiet(report, 4) is None and calls == ["step 1", "step 2"] and api_error(url)


def test_a_report_call_is_given_up_after_its_limit_and_its_result_or_error_comes_back():
    """The server can die between the /health check and the call, whose client then retries for about a minute
    (tests/flows/test_server_lost.py failed that way in a full run: the stand-in's steps stopped with the server)."""
    import time

    from r1lib.ops.api_watch import within

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        within(0.2, time.sleep, 5)
    assert time.monotonic() - started < 2
    assert within(1.0, lambda x: x + 1, 2) == 3
    with pytest.raises(ValueError, match="boom"):
        within(1.0, lambda: (_ for _ in ()).throw(ValueError("boom")))
