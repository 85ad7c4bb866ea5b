"""Odoo's real table shapes in a test PostgreSQL database (Odoo itself does not install here).

Tables, column names, types and state values follow Odoo 17.0/18.0 and OCA queue_job 18.0
as listed in REFERENCE.md sections 4 and 6: only the columns tillwatch reads, plus the
NOT NULL columns an Odoo row always has, so that a query written against these shapes
runs unchanged on a real Odoo database.

The ``odoo_db`` fixture builds the 18.0 shapes in a fresh database from ``pg_database``
and a read-only role for the collectors; parametrize it indirectly with ``17`` for the
17.0 ``ir_cron`` shape. Rows are dated relative to the database's clock, in naive UTC,
as Odoo writes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_COMMON_DDL = """
CREATE TABLE res_currency (
    id serial PRIMARY KEY, name varchar NOT NULL UNIQUE, symbol varchar NOT NULL,
    rounding numeric, active boolean DEFAULT true);
CREATE TABLE res_company (
    id serial PRIMARY KEY, name varchar NOT NULL UNIQUE, active boolean DEFAULT true,
    currency_id integer NOT NULL REFERENCES res_currency(id), sequence integer,
    parent_id integer REFERENCES res_company(id));
CREATE TABLE website (
    id serial PRIMARY KEY, name varchar NOT NULL, company_id integer NOT NULL
        REFERENCES res_company(id), domain varchar);
CREATE TABLE crm_team (
    id serial PRIMARY KEY, name jsonb NOT NULL, company_id integer REFERENCES res_company(id),
    active boolean DEFAULT true);
CREATE TABLE sale_order (
    id serial PRIMARY KEY, name varchar NOT NULL, state varchar, locked boolean,
    company_id integer NOT NULL REFERENCES res_company(id), partner_id integer NOT NULL,
    date_order timestamp without time zone NOT NULL, create_date timestamp without time zone,
    write_date timestamp without time zone, commitment_date timestamp without time zone,
    currency_id integer REFERENCES res_currency(id), currency_rate numeric,
    amount_untaxed numeric, amount_tax numeric, amount_total numeric, invoice_status varchar,
    user_id integer, team_id integer REFERENCES crm_team(id), pricelist_id integer,
    origin varchar, website_id integer REFERENCES website(id),
    CONSTRAINT sale_order_date_order_conditional_required
        CHECK ((state = 'sale' AND date_order IS NOT NULL) OR state != 'sale'));
CREATE INDEX sale_order_date_order_id_idx ON sale_order (date_order DESC, id DESC);
CREATE TABLE pos_config (
    id serial PRIMARY KEY, name varchar NOT NULL, active boolean DEFAULT true,
    company_id integer NOT NULL REFERENCES res_company(id));
CREATE TABLE pos_session (
    id serial PRIMARY KEY, name varchar NOT NULL, state varchar NOT NULL,
    config_id integer NOT NULL REFERENCES pos_config(id), company_id integer
        REFERENCES res_company(id), user_id integer NOT NULL,
    start_at timestamp without time zone, stop_at timestamp without time zone);
CREATE TABLE pos_order (
    id serial PRIMARY KEY, name varchar NOT NULL, state varchar,
    session_id integer NOT NULL REFERENCES pos_session(id),
    config_id integer REFERENCES pos_config(id),
    company_id integer NOT NULL REFERENCES res_company(id), partner_id integer,
    date_order timestamp without time zone, create_date timestamp without time zone,
    amount_total numeric NOT NULL, amount_tax numeric NOT NULL, amount_paid numeric NOT NULL,
    amount_return numeric NOT NULL, amount_difference numeric, pos_reference varchar,
    uuid varchar, account_move integer);
CREATE INDEX pos_order_date_order_index ON pos_order (date_order);
CREATE TABLE stock_picking (
    id serial PRIMARY KEY, name varchar, origin varchar, state varchar, priority varchar,
    scheduled_date timestamp without time zone NOT NULL,
    date_deadline timestamp without time zone, date timestamp without time zone,
    date_done timestamp without time zone, picking_type_id integer NOT NULL,
    location_id integer NOT NULL, location_dest_id integer NOT NULL,
    company_id integer REFERENCES res_company(id),
    pos_order_id integer REFERENCES pos_order(id));
CREATE INDEX stock_picking_scheduled_date_index ON stock_picking (scheduled_date);
CREATE TABLE queue_job (
    id serial PRIMARY KEY, uuid varchar NOT NULL, graph_uuid varchar, user_id integer,
    company_id integer REFERENCES res_company(id), name varchar, model_name varchar,
    method_name varchar, records jsonb, args jsonb, kwargs jsonb, func_string varchar,
    state varchar NOT NULL, priority integer, exc_name varchar, exc_message varchar,
    exc_info text, result text, date_created timestamp without time zone,
    date_started timestamp without time zone, date_enqueued timestamp without time zone,
    date_done timestamp without time zone, date_cancelled timestamp without time zone,
    exec_time double precision, eta timestamp without time zone, retry integer,
    max_retries integer, channel varchar, identity_key varchar, worker_pid integer);
CREATE UNIQUE INDEX queue_job_uuid_uniq ON queue_job (uuid);
CREATE INDEX queue_job_state_index ON queue_job (state);
"""

_IR_CRON_DDL = {
    17: """
CREATE TABLE ir_cron (
    id serial PRIMARY KEY, ir_actions_server_id integer NOT NULL, cron_name varchar,
    user_id integer NOT NULL, active boolean, interval_number integer,
    interval_type varchar, numbercall integer, doall boolean,
    nextcall timestamp without time zone NOT NULL, lastcall timestamp without time zone,
    priority integer);
""",
    18: """
CREATE TABLE ir_cron (
    id serial PRIMARY KEY, ir_actions_server_id integer NOT NULL, cron_name varchar,
    user_id integer NOT NULL, active boolean, interval_number integer,
    interval_type varchar, nextcall timestamp without time zone NOT NULL,
    lastcall timestamp without time zone, priority integer, failure_count integer,
    first_failure_date timestamp without time zone);
""",
}

# A datetime ``%s`` seconds before the database's now, naive UTC like Odoo's columns.
AGO = "(now() AT TIME ZONE 'UTC') - make_interval(secs => %s)"


class OdooDb:
    """A database holding Odoo's tables, with helpers that insert rows as Odoo would.

    Attributes:
        dsn: connection string of the owner (superuser) that builds the data.
        ro_dsn: connection string of the read-only role the collectors use.
        version: the Odoo major version whose ``ir_cron`` shape was created.
    """

    def __init__(self, dsn: str, ro_dsn: str, version: int) -> None:
        self.dsn, self.ro_dsn, self.version = dsn, ro_dsn, version

    def sql(self, query: str, params: tuple | list | None = None) -> list[tuple]:
        """Run one statement as the owner and return its rows (empty when none)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def insert(self, table: str, **values: Any) -> int:
        """Insert one row; values named ``<column>_ago`` are seconds before the DB's now."""
        columns, marks, params = [], [], []
        for name, value in values.items():
            column = name.removesuffix("_ago")
            columns.append(column)
            marks.append(AGO if name.endswith("_ago") else "%s")
            params.append(value)
        query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(marks)})"
        return int(self.sql(query + " RETURNING id", params)[0][0])

    def company(self, name: str, currency: str = "EUR") -> int:
        """Create a company with its currency and return its id."""
        found = self.sql("SELECT id FROM res_currency WHERE name = %s", (currency,))
        currency_id = (
            found[0][0]
            if found
            else self.insert("res_currency", name=currency, symbol=currency, rounding=0.01)
        )
        return self.insert("res_company", name=name, currency_id=currency_id)

    def pos_session(self, store: str, company_id: int, state: str = "opened") -> int:
        """Create a POS config (the store) with one session in ``state``; return the session."""
        config_id = self.insert("pos_config", name=store, company_id=company_id)
        return self.insert(
            "pos_session",
            name=f"{store}/0001",
            state=state,
            config_id=config_id,
            company_id=company_id,
            user_id=2,
        )

    def pos_order(
        self,
        session_id: int,
        company_id: int,
        *,
        amount: float,
        age: float,
        state: str = "paid",
    ) -> int:
        """Insert a POS order dated ``age`` seconds ago (its config is the session's)."""
        config_id = self.sql("SELECT config_id FROM pos_session WHERE id = %s", (session_id,))
        return self.insert(
            "pos_order",
            name=f"POS/{uuid.uuid4().hex[:8]}",
            state=state,
            session_id=session_id,
            config_id=config_id[0][0],
            company_id=company_id,
            date_order_ago=age,
            amount_total=amount,
            amount_tax=0,
            amount_paid=amount,
            amount_return=0,
        )

    def sale_order(
        self,
        company_id: int,
        *,
        amount: float,
        age: float,
        state: str = "sale",
        website_id: int | None = None,
        currency_rate: float = 1.0,
    ) -> int:
        """Insert a sale order whose ``date_order`` (confirmation time) is ``age`` s ago."""
        return self.insert(
            "sale_order",
            name=f"S{uuid.uuid4().hex[:6]}",
            state=state,
            company_id=company_id,
            partner_id=3,
            date_order_ago=age,
            amount_total=amount,
            currency_rate=currency_rate,
            website_id=website_id,
            locked=False,
        )


def _role_dsn(dsn: str, role: str) -> str:
    parts = conninfo_to_dict(dsn)
    parts["user"] = role
    parts.pop("password", None)
    return make_conninfo(**parts)


def _create_schema(dsn: str, version: int, role: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_COMMON_DDL)
        conn.execute(_IR_CRON_DDL[version])
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        dbname = conn.info.dbname
        conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"')
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')


def _drop_role(dsn: str, role: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def odoo_db(request: pytest.FixtureRequest, pg_database: str) -> Iterator[OdooDb]:
    """Odoo tables (18.0 shapes, or ``request.param`` = 17) with a read-only role."""
    version = getattr(request, "param", 18)
    role = f"tw_ro_{uuid.uuid4().hex[:10]}"
    _create_schema(pg_database, version, role)
    yield OdooDb(pg_database, _role_dsn(pg_database, role), version)
    _drop_role(pg_database, role)
