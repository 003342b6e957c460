"""GET /pool/metrics parses as Prometheus text and agrees with /pool/stats."""

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fastapi_dbpool.testing import DatabaseServer

from .conftest import ClientFor, SettingsFactory, build_app


def scrape(client: TestClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/pool/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_parse_and_match_the_pool(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings(name="orders", min_size=2, max_size=4)))
    for _ in range(5):
        assert client.get("/sleep", params={"seconds": 0.02}).status_code == 200
    samples = scrape(client)
    connections = {labels["state"]: value for labels, value in samples["dbpool_connections"]}
    assert connections["idle"] + connections["in_use"] == 2
    assert all(labels["pool"] == "orders" for labels, _ in samples["dbpool_connections"])
    assert samples["dbpool_connections_max"] == [({"pool": "orders"}, 4.0)]
    assert samples["dbpool_checkouts_total"][0][1] >= 5
    holds = dict((labels["le"], value) for labels, value in samples["dbpool_hold_seconds_bucket"])
    assert holds["+Inf"] == samples["dbpool_hold_seconds_count"][0][1] >= 5
    assert holds["0.01"] <= holds["0.025"] <= holds["+Inf"]  # cumulative
    assert holds["0.01"] < 5 <= holds["0.25"]  # the 20 ms sleeps land between 10 and 250 ms
    assert 0.1 <= samples["dbpool_hold_seconds_sum"][0][1] < 2
    causes = {labels["cause"] for labels, _ in samples["dbpool_unavailable_total"]}
    assert causes == {"pool_timeout", "queue_full", "pool_closed", "connection_lost"}
    text = client.get("/pool/metrics").text
    assert "postgresql://" not in text and "127.0.0.1" not in text
    if database_server.password:
        assert database_server.password not in text


def test_metrics_without_timings_still_report_the_pool(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    samples = scrape(client_for(build_app(make_settings(metrics=False))))
    assert "dbpool_connections" in samples
    assert "dbpool_hold_seconds_bucket" not in samples
