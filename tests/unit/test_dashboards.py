"""The committed dashboards and provisioning files: generated, well-formed, no secrets."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.registry import COLLECTORS
from dashboards.build import DASHBOARDS, DATASOURCE, dump, render_dashboard

FOLDER = Path(__file__).resolve().parents[2] / "dashboards"
PROVISIONING = FOLDER / "provisioning"
COLUMNS = 24
# The macros tests/integration/test_dashboard_queries.py expands; a new one needs it there.
KNOWN_MACROS = {"timeFilter", "timeInterval", "fromTime", "toTime", "interval_s",
                "conditionalAll"}

MODELS = [render_dashboard(dashboard) for dashboard in DASHBOARDS]
IDS = [dashboard.uid for dashboard in DASHBOARDS]


def _queries(model: dict[str, Any]) -> list[str]:
    panels = [t["rawSql"] for p in model["panels"] for t in p["targets"]]
    variables = [v["query"] for v in model["templating"]["list"] if v["type"] == "query"]
    return panels + variables


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=IDS)
def test_committed_json_is_what_build_writes(dashboard):
    committed = (FOLDER / dashboard.filename).read_text(encoding="utf-8")

    assert committed == dump(render_dashboard(dashboard)), (
        f"dashboards/{dashboard.filename} is stale: run `python -m dashboards.build`"
    )


def test_every_json_in_the_folder_is_built():
    assert sorted(p.name for p in FOLDER.glob("*.json")) == sorted(
        d.filename for d in DASHBOARDS
    )


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_dashboard_identity_suits_provisioning(model):
    assert model["id"] is None
    assert re.fullmatch(r"[a-z0-9-]{1,40}", model["uid"])
    assert isinstance(model["schemaVersion"], int) and model["schemaVersion"] >= 36
    assert model["title"].startswith("tillwatch — ")


def test_uids_and_titles_are_distinct():
    assert len({m["uid"] for m in MODELS}) == len({m["title"] for m in MODELS}) == len(MODELS)


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_panels_have_unique_ids_and_fit_the_grid_without_overlap(model):
    panels = model["panels"]
    grids = [p["gridPos"] for p in panels]

    assert len({p["id"] for p in panels}) == len(panels)
    for grid in grids:
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= COLUMNS, grid
    clashes = [(a, b) for a, b in itertools.combinations(panels, 2)
               if _overlap(a["gridPos"], b["gridPos"])]
    assert [(a["title"], b["title"]) for a, b in clashes] == []


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_panels_and_variables_query_the_tillwatch_clickhouse_datasource(model):
    queried = [v for v in model["templating"]["list"] if v["type"] == "query"]

    for panel in model["panels"]:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["editorType"] == "sql" and target["format"] in (0, 1)
    assert all(v["datasource"] == DATASOURCE for v in queried)


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_queries_read_tillwatch_tables_with_macros_the_integration_test_expands(model):
    for sql in _queries(model):
        assert re.search(r"\bFROM tillwatch\.\w+", sql), sql
        assert not re.search(r"\bFROM (?!tillwatch\.|\()", sql), sql
        assert set(re.findall(r"\$__(\w+)", sql)) <= KNOWN_MACROS, sql


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_variables_used_in_queries_are_defined(model):
    defined = {v["name"] for v in model["templating"]["list"]}

    used = {
        name
        for sql in _queries(model)
        for name in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(?!__)(\w+)", sql)
        for name in name if name
    }
    assert used <= defined


def test_every_signal_read_is_declared_by_a_collector():
    declared = {name for c in COLLECTORS.values() for name in c.declared()}
    prefixes = "|".join(sorted({name.split(".")[0] for name in declared}))
    quoted_signal = re.compile(rf"'((?:{prefixes})\.\w+)'")
    read = {
        name
        for model in MODELS
        for sql in _queries(model)
        for name in quoted_signal.findall(sql)
    }

    assert read, "expected the dashboards to read collector signals"
    assert read - declared == set()


def test_datasource_provisioning_points_at_compose_clickhouse_with_env_password():
    config = yaml.safe_load((PROVISIONING / "datasources" / "clickhouse.yml").read_text())

    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert (source["type"], source["uid"]) == (DATASOURCE["type"], DATASOURCE["uid"])
    assert (source["jsonData"]["host"], source["jsonData"]["port"]) == ("clickhouse", 8123)
    assert source["jsonData"]["defaultDatabase"] == "tillwatch"
    assert source["secureJsonData"]["password"] in (
        "$TILLWATCH_CLICKHOUSE_PASSWORD", "${TILLWATCH_CLICKHOUSE_PASSWORD}"
    )


def test_dashboard_provider_loads_the_mounted_folder():
    config = yaml.safe_load((PROVISIONING / "dashboards" / "tillwatch.yml").read_text())

    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("path", sorted(PROVISIONING.rglob("*.yml")), ids=lambda p: p.name)
def test_provisioning_files_hold_no_literal_secret(path):
    def secrets(node: Any, key: str = "") -> list[str]:
        if isinstance(node, dict):
            return [s for k, v in node.items() for s in secrets(v, str(k))]
        if isinstance(node, list):
            return [s for item in node for s in secrets(item, key)]
        sensitive = re.search(r"password|secret|token|key$", key, re.IGNORECASE)
        from_env = isinstance(node, str) and re.fullmatch(r"\$\{?[A-Z_]+\}?", node)
        return [key] if sensitive and not from_env else []

    assert secrets(yaml.safe_load(path.read_text())) == []


def test_dashboard_json_holds_no_password():
    for model in MODELS:
        assert "password" not in json.dumps(model).lower()
