"""GET /pool/dashboard: a self-contained page, drawn in headless Chromium from a real app under
load; and the Grafana dashboard, whose every query names a metric /pool/metrics exports."""

import json
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import Cookie, Depends, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fastapi_dbpool import ConnDep, create_pool_lifespan, pool_lifespan, pool_router
from fastapi_dbpool.testing import DatabaseServer
from tests.support import ROOT, serve_app

from .conftest import ClientFor, SettingsFactory, build_app

GRAFANA = ROOT / "docs" / "grafana" / "fastapi_dbpool.json"
CAUSES = ("pool_timeout", "queue_full", "pool_closed", "connection_lost")


def test_dashboard_is_one_page_with_no_external_asset(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    response = client_for(build_app(make_settings())).get("/pool/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert '<meta name="viewport"' in page
    # Nothing fetched from elsewhere: no absolute src/href/url(), no import.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*[\"']?(https?:)?//", page, re.IGNORECASE)
    assert "stylesheet" not in page and "@import" not in page and "<script src" not in page
    assert '<link rel="icon" href="data:,">' in page  # or the browser asks for /favicon.ico
    # The only http URL in it is the SVG namespace, which is a name, never fetched.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}


def test_dashboard_is_protected_like_the_other_routes(make_settings: SettingsFactory) -> None:
    def require_token(x_token: str = Header(default="")) -> None:
        if x_token != "letmein":
            raise HTTPException(403, "missing or wrong X-Token")

    app = FastAPI(lifespan=create_pool_lifespan(make_settings()))
    app.include_router(pool_router, prefix="/internal", dependencies=[Depends(require_token)])
    with TestClient(app) as client:
        assert client.get("/internal/pool/dashboard").status_code == 403
        allowed = client.get("/internal/pool/dashboard", headers={"X-Token": "letmein"})
        assert allowed.status_code == 200 and allowed.text.startswith("<!doctype html>")
        assert client.get("/pool/dashboard").status_code == 404


# --- Grafana -------------------------------------------------------------------------------

_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names (inside {...} or by (...)), ranges or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges [5m], [$__rate_interval]
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    grouping = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    expr = re.sub(grouping, "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in _NOT_METRICS:
            names.add(name)
    return names


def test_metric_names_of_an_expression() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (pool, le) (rate(dbpool_hold_seconds_bucket"
        '{pool=~"$pool", le!="x"}[$__rate_interval]))) / on (pool) dbpool_connections_max'
    )
    assert metric_names(expr) == {"dbpool_hold_seconds_bucket", "dbpool_connections_max"}


def grafana_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            yield f"${variable['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", text)


def exported_series(make_settings: SettingsFactory, client_for: ClientFor) -> set[str]:
    """Every sample name /pool/metrics exports from a real pool that served a request
    (the _total, _bucket, _count and _sum series as Prometheus stores them)."""
    client = client_for(build_app(make_settings()))
    assert client.get("/sleep", params={"seconds": 0.01}).status_code == 200
    response = client.get("/pool/metrics")
    assert response.status_code == 200
    return {
        sample.name
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_every_grafana_query_names_an_exported_metric(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    dashboard = json.loads(GRAFANA.read_text())
    exported = exported_series(make_settings, client_for)
    queries = list(grafana_queries(dashboard))
    assert len(queries) >= 8
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: {expr!r} reads no metric"
        assert names <= exported, f"{where}: {sorted(names - exported)} not in /pool/metrics"
    used = set().union(*(metric_names(expr) for _, expr in queries))
    # The questions the dashboard answers, each by its metric.
    assert {
        "dbpool_connections",
        "dbpool_connections_max",
        "dbpool_requests_waiting",
        "dbpool_acquire_wait_seconds_bucket",
        "dbpool_unavailable_total",
        "dbpool_connection_errors_total",
        "dbpool_saturated",
    } <= used


def test_grafana_dashboard_uses_a_datasource_input_and_a_pool_variable() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    assert [item["name"] for item in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["pool"]["type"] == "query"
    assert variables["pool"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    for _, expr in grafana_queries(dashboard):
        assert expr.startswith("dbpool_") or '$pool"' in expr, f"{expr!r} ignores $pool"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


# --- In a real browser ----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "letmein"


def _require_cookie(token: str = Cookie(default="")) -> None:
    if token != TOKEN:
        raise HTTPException(403, "missing or wrong token cookie")


# Served by uvicorn below: the router under a prefix, behind a cookie a browser sends itself.
protected_app = FastAPI(lifespan=pool_lifespan)
protected_app.include_router(
    pool_router, prefix="/internal", dependencies=[Depends(_require_cookie)]
)


@protected_app.get("/sleep")
async def _sleep(conn: ConnDep, seconds: float = 0.2) -> dict[str, float]:
    await conn.execute("SELECT pg_sleep(%s)", (seconds,))
    return {"slept": seconds}


# Per pool: every figure's data-value, and per chart the points and the largest value of
# each series, read from the DOM as a user's browser built it.
READ_DOM = """() => {
  const pools = {};
  for (const panel of document.querySelectorAll("section[data-pool]")) {
    const figures = {}, charts = {};
    for (const cell of panel.querySelectorAll("dd[data-field]")) {
      figures[cell.dataset.field] = cell.dataset.value === undefined
        ? null : Number(cell.dataset.value);
    }
    for (const figure of panel.querySelectorAll("figure[data-chart]")) {
      const series = {};
      for (const line of figure.querySelectorAll("polyline[data-series]")) {
        const points = line.getAttribute("points").trim().split(/\\s+/).filter(Boolean);
        series[line.dataset.series] = {points: points.length,
                                       max: Number(line.dataset.max)};
      }
      charts[figure.dataset.chart] = series;
    }
    const advice = panel.querySelector('[data-field="advice"]');
    pools[panel.dataset.pool] = {figures, charts, verdict: advice.dataset.verdict,
                                 advice: advice.textContent};
  }
  return {polls: Number(document.getElementById("status").dataset.polls), pools};
}"""


def _polls(page: Any) -> int:
    return int(page.evaluate('Number(document.getElementById("status").dataset.polls)'))


def _wait_for_polls(page: Any, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _polls(page) < count:
        assert time.monotonic() < deadline, f"the page polled {_polls(page)} times, not {count}"
        page.wait_for_timeout(50)


@pytest.mark.slow
def test_dashboard_draws_the_pools_of_a_real_app_under_load(
    database_server: DatabaseServer, unique_app_name: str, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the dev extra has it)"
    )
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install chromium (playwright drives it)")
    env = {
        "DBPOOL_URL": database_server.url,
        "DBPOOL_APPLICATION_NAME": unique_app_name,
        "DBPOOL_MIN_SIZE": "1",
        "DBPOOL_MAX_SIZE": "2",
        "DBPOOL_TIMEOUT": "0.3",  # 6 clients on 2 connections held 0.2 s: some get 503
        "DBPOOL_POOLS": "replica",
        "DBPOOL_REPLICA_URL": database_server.url,
        "DBPOOL_REPLICA_REPLICA": "true",
        "DBPOOL_REPLICA_MIN_SIZE": "1",
        "DBPOOL_REPLICA_MAX_SIZE": "3",
    }
    target = "tests.integration.test_dashboard:protected_app"
    with (
        serve_app(target, env, ready_path="/sleep?seconds=0") as app,
        sync_api.sync_playwright() as playwright,
        httpx2.Client(base_url=app.base, timeout=10, cookies={"token": TOKEN}) as client,
    ):
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except sync_api.Error as error:
            pytest.skip(f"{CHROMIUM} does not start under playwright: {error}")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        url = f"{app.base}/internal/pool/dashboard?interval=0.25&minutes=1"
        # The browser's own request, without the cookie (and without a favicon request
        # whose 404 could reach the console below later).
        assert page.context.request.get(url).status == 403
        page.context.add_cookies([{"name": "token", "value": TOKEN, "url": app.base}])
        errors: list[str] = []  # script errors, refused requests, policy violations
        page.on(
            "console",
            lambda message: errors.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)  # polls internal/pool/stats, relative to itself, sending the cookie
        _wait_for_polls(page, 2)

        # Bounded load: 6 clients, 24 requests holding a connection 0.2 s each.
        polls_before_load = _polls(page)
        with ThreadPoolExecutor(6) as executor:
            statuses = list(
                executor.map(
                    lambda _: client.get("/sleep", params={"seconds": 0.2}).status_code,
                    range(24),
                )
            )
        assert set(statuses) <= {200, 503}
        assert _polls(page) > polls_before_load, "no poll while the load ran"

        # The load is over: the page's numbers now match /pool/stats at about the same time.
        before = client.get("/internal/pool/stats").json()
        _wait_for_polls(page, _polls(page) + 2)
        dom = page.evaluate(READ_DOM)
        after = client.get("/internal/pool/stats").json()
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        assert set(dom["pools"]) == set(after["pools"]) == {"fastapi_dbpool", "replica"}
        for name, shown in dom["pools"].items():
            early, late, figures = before["pools"][name], after["pools"][name], shown["figures"]
            assert figures["pool_min"] == late["counters"]["pool_min"]
            assert figures["pool_max"] == late["counters"]["pool_max"]
            assert early["counters"]["requests_num"] <= figures["requests_num"]
            assert figures["requests_num"] <= late["counters"]["requests_num"]
            for cause in CAUSES:
                assert early["unavailable"][cause] <= figures[cause] <= late["unavailable"][cause]
            assert figures["in_use"] == 0 and figures["waiting"] == 0  # nothing runs now
            assert figures["total"] == figures["free"] <= figures["pool_max"]
            assert figures["wait_p95"] in (
                early["timings"]["acquire_wait_ms"]["window"]["p95"],
                late["timings"]["acquire_wait_ms"]["window"]["p95"],
            )
            assert figures["hold_p95"] in (
                early["timings"]["hold_ms"]["window"]["p95"],
                late["timings"]["hold_ms"]["window"]["p95"],
            )
            assert shown["verdict"] == late["advice"]["verdict"]
            assert shown["advice"] == late["advice"]["message"]
            # A point per poll (the 503 rates: one fewer, they are differences).
            charts, polls = shown["charts"], dom["polls"]
            for series in ("in_use", "idle", "waiting", "max"):
                assert charts["connections"][series]["points"] == polls
            for series in ("wait_p95", "hold_p95"):
                assert charts["timings"][series]["points"] == polls
            for cause in CAUSES:
                assert charts["unavailable"][cause]["points"] == polls - 1
            assert charts["connections"]["max"]["max"] == late["counters"]["pool_max"]

        # What the client lived through, the page drew: the default pool full while requests
        # waited, and every 503 counted under its cause.
        default = dom["pools"]["fastapi_dbpool"]
        assert default["charts"]["connections"]["in_use"]["max"] == 2
        assert default["charts"]["connections"]["waiting"]["max"] >= 1
        assert default["figures"]["unavailable_total"] == statuses.count(503)
        assert default["figures"]["requests_num"] >= len(statuses)
        assert default["charts"]["timings"]["wait_p95"]["max"] > 0
        replica = dom["pools"]["replica"]
        assert replica["charts"]["connections"]["in_use"]["max"] == 0  # no read went there
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000

        # On a phone: one column, nothing wider than the screen.
        page.set_viewport_size({"width": 390, "height": 844})
        _wait_for_polls(page, _polls(page) + 1)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1]
        page.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
        assert errors == []
        browser.close()
