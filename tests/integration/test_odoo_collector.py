"""The odoo collector on Odoo's real table shapes in a real PostgreSQL (odoo_db fixture)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from collectors.base import Reading, TargetState, scrape
from collectors.odoo import POS_STATES, SALE_STATES, OdooCollector, OdooRpc
from tests.services._support import free_port
from tests.services.odoo_schema import OdooDb
from tillwatch.errors import ConfigError, SourceError

pytestmark = pytest.mark.integration

CHECKED_SIGNALS = {
    "kpi.orders_per_minute",
    "kpi.revenue_per_minute",
    "kpi.stock_sync_delay_seconds",
    "kpi.stock_sync_delay_max_seconds",
    "kpi.pickings_overdue",
    "kpi.pickings_overdue_oldest_age_seconds",
    "odoo.cron_overdue",
    "odoo.cron_overdue_oldest_age_seconds",
    "odoo.cron_failing",
    "odoo.up",
    "odoo.scrape_duration_seconds",
}
RPC_DATA = Path(__file__).parents[1] / "data" / "odoo_rpc"

Build = Callable[..., OdooCollector]
TARGET = {"service": "odoo", "instance": "shop-test"}


@pytest.fixture
def collector() -> Iterator[Callable[..., OdooCollector]]:
    """Builds collectors on an Odoo database and closes them after the test."""
    built: list[OdooCollector] = []

    def build(db: OdooDb, **options: float) -> OdooCollector:
        built.append(OdooCollector(dsn=db.ro_dsn, labels=TARGET, **options))
        return built[-1]

    yield build
    for odoo in built:
        odoo.close()


def by_labels(readings: list[Reading], signal: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Values of one signal keyed by their sorted labels."""
    return {tuple(sorted(r.labels.items())): r.value for r in readings if r.signal == signal}


def pos(company: str, store: str) -> tuple[tuple[str, str], ...]:
    return (("company", company), ("sales_channel", "pos"), ("store", store))


def channel(company: str, name: str) -> tuple[tuple[str, str], ...]:
    return (("company", company), ("sales_channel", name))


def test_orders_and_revenue_per_minute_by_channel_store_and_company(
    odoo_db: OdooDb, collector: Build
) -> None:
    rng = random.Random(7)
    eu, uk = odoo_db.company("Shop EU"), odoo_db.company("Shop UK", currency="GBP")
    lyon, leeds = odoo_db.pos_session("Lyon", eu), odoo_db.pos_session("Leeds", uk)
    odoo_db.pos_session("Nice", eu)
    web = odoo_db.insert("website", name="shop.example", company_id=eu)

    # Inside the 60 s first window: every state that is a sale, at random ages.
    lyon_amounts = [round(rng.uniform(5, 80), 2) for _ in range(30)]
    for amount in lyon_amounts:
        state = rng.choice(["paid", "done", "invoiced"])
        odoo_db.pos_order(lyon, eu, amount=amount, age=rng.uniform(5, 45), state=state)
    leeds_amounts = [12.5] * 6
    for amount in leeds_amounts:
        odoo_db.pos_order(leeds, uk, amount=amount, age=rng.uniform(5, 45))
    web_amounts = [round(rng.uniform(20, 200), 2) for _ in range(10)]
    for amount in web_amounts:
        odoo_db.sale_order(eu, amount=amount, age=rng.uniform(5, 45), website_id=web)
    # Back-office orders in a foreign currency: revenue converts back with currency_rate.
    odoo_db.sale_order(eu, amount=100.0, age=10, currency_rate=2.0)
    odoo_db.sale_order(eu, amount=40.0, age=20)

    # Not sales, or outside the window: none of these may count.
    for state in ("draft", "cancel"):
        odoo_db.pos_order(lyon, eu, amount=999.0, age=10, state=state)
    for state in ("draft", "sent", "cancel"):
        odoo_db.sale_order(eu, amount=999.0, age=10, state=state, website_id=web)
    odoo_db.pos_order(lyon, eu, amount=999.0, age=120)
    odoo_db.sale_order(eu, amount=999.0, age=120)

    readings = list(collector(odoo_db, first_window_seconds=60).read(time.time()))

    orders = by_labels(readings, "kpi.orders_per_minute")
    revenue = by_labels(readings, "kpi.revenue_per_minute")
    assert orders == {
        pos("Shop EU", "Lyon"): len(lyon_amounts),
        pos("Shop EU", "Nice"): 0.0,
        pos("Shop UK", "Leeds"): len(leeds_amounts),
        channel("Shop EU", "website"): len(web_amounts),
        channel("Shop EU", "back_office"): 2.0,
    }
    assert revenue[pos("Shop EU", "Lyon")] == pytest.approx(sum(lyon_amounts))
    assert revenue[pos("Shop UK", "Leeds")] == pytest.approx(sum(leeds_amounts))
    assert revenue[channel("Shop EU", "website")] == pytest.approx(sum(web_amounts))
    assert revenue[channel("Shop EU", "back_office")] == pytest.approx(100.0 / 2.0 + 40.0)
    assert revenue[pos("Shop EU", "Nice")] == 0.0


def test_next_scrape_counts_only_orders_since_the_previous_one(
    odoo_db: OdooDb, collector: Build
) -> None:
    eu = odoo_db.company("Shop EU")
    lyon, nice = odoo_db.pos_session("Lyon", eu), odoo_db.pos_session("Nice", eu)
    odoo_db.pos_order(nice, eu, amount=10.0, age=30)
    odoo = collector(odoo_db, first_window_seconds=60)
    odoo.read(time.time())
    first_end = odoo.window[1]

    for _ in range(12):
        odoo_db.pos_order(lyon, eu, amount=3.0, age=0)
    readings = list(odoo.read(time.time()))

    start, end = odoo.window
    assert start == first_end
    minutes = (end - start).total_seconds() / 60
    orders = by_labels(readings, "kpi.orders_per_minute")
    assert orders[pos("Shop EU", "Lyon")] == pytest.approx(12 / minutes)
    # Nice sold in the first window only: it now reads 0 instead of going silent.
    assert orders[pos("Shop EU", "Nice")] == 0.0
    assert by_labels(readings, "kpi.revenue_per_minute")[pos("Shop EU", "Lyon")] == (
        pytest.approx(36.0 / minutes)
    )


def test_store_without_an_open_session_is_not_reported(
    odoo_db: OdooDb, collector: Build
) -> None:
    eu = odoo_db.company("Shop EU")
    odoo_db.pos_session("Closed store", eu, state="closed")

    readings = list(collector(odoo_db).read(time.time()))

    assert by_labels(readings, "kpi.orders_per_minute") == {}


def picking(db: OdooDb, company: int, state: str, scheduled_ago: float, **extra: float) -> int:
    return db.insert(
        "stock_picking",
        name="WH/OUT",
        state=state,
        scheduled_date_ago=scheduled_ago,
        picking_type_id=1,
        location_id=8,
        location_dest_id=5,
        company_id=company,
        **extra,
    )


def test_picking_delays_and_overdue_pickings(odoo_db: OdooDb, collector: Build) -> None:
    eu, uk = odoo_db.company("Shop EU"), odoo_db.company("Shop UK")
    # Done in the window: delays 290 s, 60 s, and one done early (counts as 0).
    picking(odoo_db, eu, "done", 300, date_done_ago=10)
    picking(odoo_db, eu, "done", 100, date_done_ago=40)
    picking(odoo_db, eu, "done", -100, date_done_ago=20)
    picking(odoo_db, eu, "done", 5000, date_done_ago=200)  # done before the window
    # Open and overdue past a 60 s grace: 3600 s and 600 s late.
    picking(odoo_db, eu, "assigned", 3600)
    picking(odoo_db, eu, "confirmed", 600)
    # Not overdue: within the grace, planned in the future, draft, cancelled.
    picking(odoo_db, eu, "waiting", 30)
    picking(odoo_db, eu, "assigned", -600)
    picking(odoo_db, eu, "draft", 9999)
    picking(odoo_db, eu, "cancel", 9999)

    readings = list(collector(odoo_db, picking_grace_seconds=60).read(time.time()))

    eu_only = (("company", "Shop EU"),)
    assert by_labels(readings, "kpi.stock_sync_delay_seconds") == {
        eu_only: pytest.approx((290 + 60 + 0) / 3, abs=0.01)
    }
    assert by_labels(readings, "kpi.stock_sync_delay_max_seconds")[eu_only] == (
        pytest.approx(290, abs=0.01)
    )
    assert by_labels(readings, "kpi.pickings_overdue") == {
        eu_only: 2.0,
        (("company", "Shop UK"),): 0.0,
    }
    oldest = by_labels(readings, "kpi.pickings_overdue_oldest_age_seconds")
    assert oldest[eu_only] == pytest.approx(3600, abs=5)
    assert oldest[(("company", "Shop UK"),)] == 0.0
    assert uk


def cron(db: OdooDb, nextcall_ago: float, active: bool = True, **extra: int) -> int:
    return db.insert(
        "ir_cron",
        ir_actions_server_id=1,
        cron_name="Sync",
        user_id=1,
        active=active,
        interval_number=5,
        interval_type="minutes",
        nextcall_ago=nextcall_ago,
        priority=5,
        **extra,
    )


def test_overdue_and_failing_crons_on_18(odoo_db: OdooDb, collector: Build) -> None:
    cron(odoo_db, 3600, failure_count=0)
    cron(odoo_db, 1200, failure_count=3)
    cron(odoo_db, 300, failure_count=1)  # within the 600 s grace
    cron(odoo_db, 7200, active=False, failure_count=5)
    cron(odoo_db, -60, failure_count=0)

    readings = list(collector(odoo_db, cron_grace_seconds=600).read(time.time()))

    values = {r.signal: r.value for r in readings if r.signal.startswith("odoo.")}
    assert values["odoo.cron_overdue"] == 2.0
    assert values["odoo.cron_overdue_oldest_age_seconds"] == pytest.approx(3600, abs=5)
    assert values["odoo.cron_failing"] == 2.0


@pytest.mark.parametrize("odoo_db", [17], indirect=True)
def test_finished_crons_on_17_are_not_overdue(odoo_db: OdooDb, collector: Build) -> None:
    cron(odoo_db, 3600, numbercall=-1)
    cron(odoo_db, 1800, numbercall=0)  # ran its last call: never runs again

    readings = list(collector(odoo_db, cron_grace_seconds=600).read(time.time()))

    values = {r.signal: r.value for r in readings}
    assert values["odoo.cron_overdue"] == 1.0
    assert values["odoo.cron_overdue_oldest_age_seconds"] == pytest.approx(3600, abs=5)
    assert "odoo.cron_failing" not in values


def test_scrape_reports_up_and_only_declared_signals(odoo_db: OdooDb, collector: Build) -> None:
    eu = odoo_db.company("Shop EU")
    odoo_db.pos_order(odoo_db.pos_session("Lyon", eu), eu, amount=5.0, age=5)

    batch = scrape(collector(odoo_db), TargetState())

    samples = {s.signal: s for s in batch.samples()}
    assert samples["odoo.up"].value == 1.0
    assert 0.0 < samples["odoo.scrape_duration_seconds"].value < 10.0
    assert set(samples) <= set(OdooCollector.declared())
    assert samples["kpi.orders_per_minute"].labels["instance"] == "shop-test"


def test_missing_grant_is_permission_denied_and_the_collector_recovers(
    odoo_db: OdooDb, collector: Build
) -> None:
    role = conninfo_to_dict(odoo_db.ro_dsn)["user"]
    odoo_db.sql(f'REVOKE SELECT ON pos_order FROM "{role}"')
    odoo = collector(odoo_db)
    with pytest.raises(SourceError) as failure:
        odoo.read(time.time())
    assert failure.value.code == "permission_denied"
    assert "pos_order" in str(failure.value)

    odoo_db.sql(f'GRANT SELECT ON pos_order TO "{role}"')
    assert list(odoo.read(time.time()))


def test_unreachable_database_is_up_zero_with_code_refused(
    odoo_db: OdooDb, collector: Build
) -> None:
    dead = make_conninfo(odoo_db.ro_dsn, port=free_port())
    odoo = OdooCollector(dsn=dead, labels=TARGET, connect_timeout=2)
    state = TargetState()

    batch = scrape(odoo, state)

    assert {s.signal: s.value for s in batch.samples()}["odoo.up"] == 0.0
    assert state.error_code == "refused"


class OdooApiDouble(ThreadingHTTPServer):
    """A local HTTP server answering Odoo's documented API shapes from tests/data."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.answers: dict[str, tuple[int, Any]] = {}
        self.requests: list[tuple[str, dict[str, str], Any]] = []


class _ApiHandler(BaseHTTPRequestHandler):
    server: OdooApiDouble

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        if self.path == "/jsonrpc":
            params = body["params"]
            key = "login" if params["service"] == "common" else params["args"][3]
        else:
            key = self.path.split("/")[3]
        status, answer = self.server.answers[key]
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def odoo_api() -> Iterator[OdooApiDouble]:
    server = OdooApiDouble()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RPC_DATA / f"{name}.json").read_text())


def rpc_collector(rpc: OdooRpc, collector_list: list[OdooCollector]) -> OdooCollector:
    collector_list.append(OdooCollector(labels=TARGET, rpc=rpc, first_window_seconds=60))
    return collector_list[-1]


@pytest.fixture
def rpc_collectors() -> Iterator[list[OdooCollector]]:
    built: list[OdooCollector] = []
    yield built
    for odoo in built:
        odoo.close()


def test_jsonrpc_orders_use_execute_kw_read_group(
    odoo_api: OdooApiDouble, rpc_collectors: list[OdooCollector]
) -> None:
    shapes = recorded("jsonrpc")
    odoo_api.answers = {key: (200, shapes[key]) for key in ("login", "pos.order", "sale.order")}
    rpc = OdooRpc(url=odoo_api.url, database="shop", login="bot", api_key="k-123")

    readings = list(rpc_collector(rpc, rpc_collectors).read(1_800_000_000.0))

    orders = by_labels(readings, "kpi.orders_per_minute")
    assert orders == {
        pos("Shop EU", "Lyon"): 30.0,
        pos("Shop UK", "Leeds"): 6.0,
        channel("Shop EU", "website"): 10.0,
        channel("Shop EU", "back_office"): 2.0,
    }
    assert by_labels(readings, "kpi.revenue_per_minute")[pos("Shop EU", "Lyon")] == 912.4

    login, pos_call, sale_call = (body["params"] for _, _, body in odoo_api.requests)
    assert (login["service"], login["method"], login["args"]) == (
        "common",
        "login",
        ["shop", "bot", "k-123"],
    )
    db, uid, key, model, method, args, kwargs = pos_call["args"]
    assert (pos_call["service"], pos_call["method"]) == ("object", "execute_kw")
    assert (db, uid, key, model, method, kwargs) == (
        "shop",
        2,
        "k-123",
        "pos.order",
        "read_group",
        {"lazy": False},
    )
    domain, fields, groupby = args
    # The window is the minute before the scrape time, in Odoo's naive-UTC text format.
    assert domain == [
        ["date_order", ">", "2027-01-15 07:59:00"],
        ["date_order", "<=", "2027-01-15 08:00:00"],
        ["state", "in", list(POS_STATES)],
    ]
    assert (fields, groupby) == (["amount_total:sum"], ["company_id", "config_id"])
    assert sale_call["args"][5][0][2] == ["state", "in", list(SALE_STATES)]


def test_json2_orders_use_bearer_key_and_formatted_read_group(
    odoo_api: OdooApiDouble, rpc_collectors: list[OdooCollector]
) -> None:
    shapes = recorded("json2")
    odoo_api.answers = {key: (200, shapes[key]) for key in ("pos.order", "sale.order")}
    rpc = OdooRpc(url=odoo_api.url, database="shop", api_key="k-456", api="json2")

    readings = list(rpc_collector(rpc, rpc_collectors).read(1_800_000_000.0))

    assert by_labels(readings, "kpi.orders_per_minute") == {
        pos("Shop EU", "Lyon"): 30.0,
        channel("Shop EU", "website"): 10.0,
        channel("Shop EU", "back_office"): 2.0,
    }
    path, headers, body = odoo_api.requests[0]
    assert path == "/json/2/pos.order/formatted_read_group"
    assert headers["Authorization"] == "bearer k-456"
    assert headers["X-Odoo-Database"] == "shop"
    assert body["groupby"] == ["company_id", "config_id"]
    assert body["aggregates"] == ["__count", "amount_total:sum"]
    assert body["domain"][2] == ["state", "in", list(POS_STATES)]


@pytest.mark.parametrize(
    ("api", "answers", "code"),
    [
        ("jsonrpc", {"login": (200, "login_refused")}, "auth_failed"),
        ("jsonrpc", {"login": (200, "login"), "pos.order": (200, "access_error")},
         "permission_denied"),
        ("json2", {"pos.order": (401, "unauthorized")}, "auth_failed"),
    ],
)  # fmt: skip
def test_api_errors_map_to_stable_codes(
    odoo_api: OdooApiDouble, api: str, answers: dict[str, tuple[int, str]], code: str
) -> None:
    shapes = recorded(api)
    odoo_api.answers = {key: (status, shapes[name]) for key, (status, name) in answers.items()}
    rpc = OdooRpc(url=odoo_api.url, database="shop", login="bot", api_key="k", api=api)

    with pytest.raises(SourceError) as failure:
        rpc.order_totals(*_a_minute())
    rpc.close()

    assert failure.value.code == code
    assert odoo_api.url in str(failure.value)


def _a_minute() -> tuple[datetime, datetime]:
    end = datetime(2027, 1, 15, 8, 0, 0)
    return end - timedelta(minutes=1), end


def test_collector_needs_a_database_or_an_api() -> None:
    with pytest.raises(ConfigError, match="dsn"):
        OdooCollector(labels=TARGET)
    with pytest.raises(ConfigError, match="login"):
        OdooRpc(url="http://127.0.0.1:1", database="shop", api_key="k")
