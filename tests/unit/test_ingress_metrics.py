"""ingress/metrics.py and the multiprocess directory ingress/gunicorn.conf.py prepares.

Here the metrics live in this process (no ``PROMETHEUS_MULTIPROC_DIR``), as under the Flask test
client; tests/integration/test_metrics.py scrapes a gunicorn ingress with several workers.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from emulators.localrun import ROOT
from ingress import metrics


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    metrics.instrument(app)

    @app.get("/v1/jobs/<job_id>")
    def get_job(job_id: str) -> str:
        return job_id

    return app


def test_requests_are_labelled_by_route_template_not_path(app: Flask) -> None:
    route = "/v1/jobs/<job_id>"
    before = value("omni_ingress_requests_total", route=route, method="GET", status="200")
    timed = value("omni_ingress_request_seconds_count", route=route, method="GET")

    client = app.test_client()
    for job_id in ("a1", "b2", "c3"):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200

    after = value("omni_ingress_requests_total", route=route, method="GET", status="200")
    assert after - before == 3
    assert value("omni_ingress_request_seconds_count", route=route, method="GET") - timed == 3
    exposed = app.test_client().get("/metrics").get_data(as_text=True)
    assert "/v1/jobs/a1" not in exposed


def test_a_path_no_rule_matches_is_unmatched(app: Flask) -> None:
    labels = {"route": metrics.UNMATCHED, "method": "GET", "status": "404"}
    before = value("omni_ingress_requests_total", **labels)

    assert app.test_client().get("/no/such/path/4711").status_code == 404

    assert value("omni_ingress_requests_total", **labels) - before == 1


def test_an_unknown_method_is_other_and_a_405_unmatched(app: Flask) -> None:
    # Werkzeug matches no rule when the method is wrong, so a 405 has no route template either.
    labels = {"route": metrics.UNMATCHED, "method": metrics.OTHER_METHOD, "status": "405"}
    before = value("omni_ingress_requests_total", **labels)

    assert app.test_client().open("/v1/jobs/x", method="BREW").status_code == 405

    assert value("omni_ingress_requests_total", **labels) - before == 1


def test_route_label_of_no_rule_is_unmatched() -> None:
    assert metrics.route_label(None) == "unmatched"


def test_metrics_serves_the_default_registry_in_prometheus_text(app: Flask) -> None:
    app.test_client().get("/v1/jobs/seen")

    response = app.test_client().get("/metrics")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    names = {f.name for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"omni_ingress_requests", "omni_ingress_request_seconds"} <= names


def test_a_publish_is_timed_with_its_outcome() -> None:
    @metrics.timed_publish
    def publish(fail: bool) -> str:
        if fail:
            raise RuntimeError("no")
        return "id-1"

    ok = value("omni_ingress_publish_seconds_count", outcome="ok")
    failed = value("omni_ingress_publish_seconds_count", outcome="failed")

    assert publish(False) == "id-1"
    with pytest.raises(RuntimeError):
        publish(True)

    assert value("omni_ingress_publish_seconds_count", outcome="ok") - ok == 1
    assert value("omni_ingress_publish_seconds_count", outcome="failed") - failed == 1


def open_streams() -> float:
    return value("omni_ingress_event_streams_open")


def stream_of(*events: str) -> Callable[[], Iterator[str]]:
    @metrics.counted_stream
    def stream() -> Iterator[str]:
        yield from events

    return stream


def test_a_stream_counts_as_open_from_its_first_event_until_it_ends() -> None:
    before = open_streams()
    stream = stream_of("a", "b")()
    assert open_streams() == before  # built, not started: the view has not returned yet

    assert next(stream) == "a"
    assert open_streams() == before + 1
    assert list(stream) == ["b"]
    assert open_streams() == before


def test_a_stream_closed_early_stops_counting() -> None:
    before = open_streams()
    stream = stream_of("a", "b")()
    next(stream)

    stream.close()  # what the server does when the client went away

    assert open_streams() == before


def test_a_streamed_response_counts_while_it_is_read(app: Flask) -> None:
    stream = stream_of("data: 1\n\n", "data: 2\n\n")
    app.add_url_rule("/stream", "stream", lambda: Response(stream(), mimetype="text/event-stream"))
    before = open_streams()

    response = app.test_client().get("/stream", buffered=False)
    chunks = response.response
    assert next(iter(chunks)) == b"data: 1\n\n"
    assert open_streams() == before + 1
    response.close()

    assert open_streams() == before


def test_submissions_count_by_task() -> None:
    jobs = value("omni_ingress_jobs_submitted_total", task="embed")
    items = value("omni_ingress_batch_items_submitted_total", task="embed")

    metrics.job_submitted("embed")
    metrics.batch_submitted("embed", 250)

    assert value("omni_ingress_jobs_submitted_total", task="embed") - jobs == 1
    assert value("omni_ingress_batch_items_submitted_total", task="embed") - items == 250


# -- ingress/gunicorn.conf.py: the directory the workers share ----------------------------------


@pytest.fixture
def conf() -> dict[str, Any]:
    """The gunicorn configuration's names (loading it only defines settings and hooks)."""
    return runpy.run_path(str(ROOT / "ingress" / "gunicorn.conf.py"))


def test_without_a_directory_a_fresh_one_is_made_and_exported(conf: dict[str, Any]) -> None:
    environ: dict[str, str] = {}

    made = conf["prepare_multiproc_dir"](environ)

    try:
        assert made is not None and environ["PROMETHEUS_MULTIPROC_DIR"] == made
        assert Path(made).is_dir() and list(Path(made).iterdir()) == []
    finally:
        Path(made).rmdir()


def test_a_named_directory_loses_only_its_metric_files(
    conf: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "counter_4242.db").write_bytes(b"stale")
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"stale")
    (tmp_path / "README").write_text("the operator's own file")
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    made = conf["prepare_multiproc_dir"](environ)

    assert made is None  # named by the operator: never removed at exit
    assert [p.name for p in tmp_path.iterdir()] == ["README"]
    assert environ == {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}


def test_a_named_directory_that_does_not_exist_is_made(
    conf: dict[str, Any], tmp_path: Path
) -> None:
    named = tmp_path / "metrics" / "ingress"

    assert conf["prepare_multiproc_dir"]({"PROMETHEUS_MULTIPROC_DIR": str(named)}) is None

    assert named.is_dir()


def test_only_a_directory_made_at_start_is_removed_at_exit(
    conf: dict[str, Any], tmp_path: Path
) -> None:
    class Server:
        omni_own_multiproc_dir: str | None = None

    server = Server()
    conf["on_exit"](server)  # the operator's directory (or none): nothing to remove
    made = tmp_path / "made"
    made.mkdir()
    server.omni_own_multiproc_dir = str(made)

    conf["on_exit"](server)

    assert not made.exists() and tmp_path.exists()


# -- METRICS_PORT: the metrics off the app's port ------------------------------------------------


def test_an_app_told_not_to_serve_metrics_has_no_route_and_still_counts() -> None:
    app = Flask(__name__)
    metrics.instrument(app, serve=False)
    labels = {"route": metrics.UNMATCHED, "method": "GET", "status": "404"}
    before = value("omni_ingress_requests_total", **labels)

    assert app.test_client().get("/metrics").status_code == 404

    assert value("omni_ingress_requests_total", **labels) - before == 1


def test_the_merged_metrics_are_served_on_loopback_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.request import urlopen

    from emulators.process import free_port

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    server = metrics.serve_merged(free_port())
    try:
        host, port = server.server_address[:2]
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            status, content_type = response.status, response.headers["Content-Type"]
    finally:
        server.shutdown()
        server.server_close()

    assert host == metrics.METRICS_HOST == "127.0.0.1"
    assert status == 200 and content_type.startswith("text/plain")
