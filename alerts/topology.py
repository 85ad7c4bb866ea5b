"""The service dependency map of an Odoo retail estate, as data.

Nodes are infrastructure services (``postgres``, ``redis``, ``traefik``, ``queue``,
``backup``, ``odoo``) and business KPI signals (``kpi.orders_per_minute``...). An edge
``a -> b`` in :data:`DEPENDS_ON` reads "a needs b to work", so a KPI is *downstream* of
every service it transitively depends on. ``backup`` does not serve traffic: it
*protects* the databases, which :data:`PROTECTS` records separately, because a stale
backup never slows checkout but does decide whether a broken replica puts data at risk.

Every table can be replaced from configuration with :meth:`Topology.from_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from tillwatch.errors import ConfigError

Edges = dict[str, tuple[str, ...]]

# Who needs whom. Traefik routes the shop's requests to Odoo, so what it measures on those
# routes (rates, latency, 5xx, checkout paths) needs both Traefik and Odoo, and the KPIs
# need the routes; Odoo needs the primary and Redis; stock sync reads the replica and runs
# as queue jobs. KPI names are those collectors/odoo.py declares.
DEPENDS_ON: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "kpi.orders_per_minute": ("traefik_routes",),
    "kpi.revenue_per_minute": ("traefik_routes",),
    "kpi.stock_sync_delay_seconds": ("queue", "postgres_replica"),
    "kpi.stock_sync_delay_max_seconds": ("queue", "postgres_replica"),
    "kpi.pickings_overdue": ("queue", "odoo"),
    "kpi.pickings_overdue_oldest_age_seconds": ("queue", "odoo"),
    "traefik_routes": ("traefik", "odoo"),
    "tls_certificates": (),
    "odoo": ("postgres", "redis"),
    "queue": ("odoo", "postgres"),
    "postgres_replica": ("postgres",),
    "backup": ("postgres",),
    "postgres": (),
    "redis": (),
    "traefik": (),
})

# What a control guards: a fresh backup is what makes a broken replica survivable.
# A valid certificate is what lets Traefik serve: until it expires it slows nothing, so
# its countdown must not gather the KPIs' noise into its incident.
PROTECTS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "backup": ("postgres", "postgres_replica"),
    "tls_certificates": ("traefik",),
})

# Signal prefixes naming a node more precisely than the signal's first segment does;
# the longest matching prefix wins. Names as the collectors in collectors/ declare them.
SIGNAL_NODES: Mapping[str, str] = MappingProxyType({
    "postgres.replication_": "postgres_replica",
    "postgres.replica_": "postgres_replica",
    "postgres.replicas_": "postgres_replica",
    "postgres.wal_receiver_": "postgres_replica",
    "postgres.apply_backlog_": "postgres_replica",
    "traefik.requests_": "traefik_routes",
    "traefik.server_error_": "traefik_routes",
    "traefik.latency_": "traefik_routes",
    "traefik.service_": "traefik_routes",
    "traefik.path_": "traefik_routes",
    "traefik.tls_": "tls_certificates",
})

# The service label of a node's alerts when its series carry none (and for KPI-only
# incidents); nodes not listed are their own service.
SERVICES: Mapping[str, str] = MappingProxyType({
    "postgres_replica": "postgres",
    "traefik_routes": "traefik",
    "tls_certificates": "traefik",
    "kpi.orders_per_minute": "odoo",
    "kpi.revenue_per_minute": "odoo",
    "kpi.stock_sync_delay_seconds": "queue",
    "kpi.stock_sync_delay_max_seconds": "queue",
    "kpi.pickings_overdue": "odoo",
    "kpi.pickings_overdue_oldest_age_seconds": "odoo",
})

# Nodes whose series carry a service label naming something else: Traefik's router and
# service series are labelled with Traefik's backend (``service="odoo@file"``).
FOREIGN_SERVICE_LABELS: frozenset[str] = frozenset({"traefik_routes"})


@dataclass(frozen=True)
class Topology:
    """A dependency graph between services and KPIs, with the queries alerts need.

    Attributes:
        depends_on: node -> the nodes it needs directly.
        protects: control node -> the nodes it guards (not a runtime dependency).
        signal_nodes: signal prefix -> node, for signals whose first segment is too coarse.
        services: node -> the ``service`` label its alerts carry.
        foreign_service_labels: nodes whose series' own ``service`` label is not to be
            used (it names something other than a service of the estate).
    """

    depends_on: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEPENDS_ON)
    protects: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: PROTECTS)
    signal_nodes: Mapping[str, str] = field(default_factory=lambda: SIGNAL_NODES)
    services: Mapping[str, str] = field(default_factory=lambda: SERVICES)
    foreign_service_labels: frozenset[str] = FOREIGN_SERVICE_LABELS

    def __post_init__(self) -> None:
        _check_declared(self.depends_on)
        _check_acyclic(self.depends_on)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Topology:
        """Build a topology from configuration; tables not given keep their defaults.

        Args:
            config: optional keys ``depends_on``, ``protects`` (node -> list of nodes),
                ``signal_nodes`` and ``services`` (str -> str), and
                ``foreign_service_labels`` (list of nodes).

        Returns:
            The validated topology.

        Raises:
            ConfigError: on an unknown key, an edge to an undeclared node, or a cycle.
        """
        keys = {"depends_on", "protects", "signal_nodes", "services", "foreign_service_labels"}
        unknown = set(config) - keys
        if unknown:
            raise ConfigError(
                f"alerts.topology: unknown keys {sorted(unknown)}; expected depends_on, "
                "protects, signal_nodes, services or foreign_service_labels"
            )

        def edges(key: str, default: Mapping[str, tuple[str, ...]]) -> Edges:
            table = config.get(key, default)
            return {node: tuple(targets) for node, targets in table.items()}

        return cls(
            depends_on=edges("depends_on", DEPENDS_ON),
            protects=edges("protects", PROTECTS),
            signal_nodes=dict(config.get("signal_nodes", SIGNAL_NODES)),
            services=dict(config.get("services", SERVICES)),
            foreign_service_labels=frozenset(
                config.get("foreign_service_labels", FOREIGN_SERVICE_LABELS)
            ),
        )

    def node_of(self, signal: str, labels: Mapping[str, str]) -> str:
        """Return the node a series belongs to.

        A KPI signal declared in the graph is its own node; otherwise the longest
        matching prefix of :attr:`signal_nodes`, then a ``service`` label naming a known
        node, then the signal's first segment.

        Args:
            signal: the series' signal.
            labels: the series' labels.

        Returns:
            The node name.
        """
        if signal in self.depends_on:
            return signal

        prefixes = [prefix for prefix in self.signal_nodes if signal.startswith(prefix)]
        if prefixes:
            return self.signal_nodes[max(prefixes, key=len)]

        service = labels.get("service", "")
        if service in self.depends_on:
            return service
        return signal.split(".", 1)[0]

    def service_of(self, node: str) -> str:
        """Return the ``service`` label of a node."""
        return self.services.get(node, node)

    def service_label_of(self, node: str, labels: Mapping[str, str]) -> str:
        """Return the ``service`` label alerts on a series of ``node`` should carry: the
        series' own, unless the node is one of :attr:`foreign_service_labels`."""
        if node in self.foreign_service_labels:
            return self.service_of(node)
        return labels.get("service") or self.service_of(node)

    def upstream(self, node: str) -> frozenset[str]:
        """Return every node ``node`` transitively depends on (not itself)."""
        return self._upstream.get(node, frozenset())

    def downstream_kpis(self, node: str) -> frozenset[str]:
        """Return the KPI signals that transitively depend on ``node``."""
        kpis = (name for name in self.depends_on if name.startswith("kpi."))
        return frozenset(kpi for kpi in kpis if node in self.upstream(kpi))

    def related(self, one: str, other: str) -> bool:
        """Whether anomalies of two nodes plausibly belong to one incident.

        They do when one depends on the other, when one protects the other, or when both
        are KPIs fed by a common direct dependency (checkout latency and orders both sit
        on Odoo behind Traefik).
        """
        if one == other or one in self.upstream(other) or other in self.upstream(one):
            return True
        if other in self.protects.get(one, ()) or one in self.protects.get(other, ()):
            return True

        both_kpis = one.startswith("kpi.") and other.startswith("kpi.")
        shared = set(self.depends_on.get(one, ())) & set(self.depends_on.get(other, ()))
        return both_kpis and bool(shared)

    @cached_property
    def _upstream(self) -> dict[str, frozenset[str]]:
        closure: dict[str, frozenset[str]] = {}

        def visit(node: str) -> frozenset[str]:
            if node not in closure:
                direct = self.depends_on.get(node, ())
                closure[node] = frozenset(direct).union(*(visit(dep) for dep in direct))
            return closure[node]

        for node in self.depends_on:
            visit(node)
        return closure


def _check_declared(edges: Mapping[str, tuple[str, ...]]) -> None:
    for node, targets in edges.items():
        missing = [target for target in targets if target not in edges]
        if missing:
            raise ConfigError(
                f"alerts.topology.depends_on: {node!r} needs {missing}, which are not "
                "declared; add each as a node (with an empty list if it needs nothing)"
            )


def _check_acyclic(edges: Mapping[str, tuple[str, ...]]) -> None:
    # Depth-first search with three colours: grey on the stack means a cycle.
    colour: dict[str, str] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        if colour.get(node) == "grey":
            cycle = " -> ".join((*path, node))
            raise ConfigError(
                f"alerts.topology.depends_on: dependency cycle {cycle}; remove one edge"
            )
        if colour.get(node) == "black":
            return

        colour[node] = "grey"
        for target in edges.get(node, ()):
            visit(target, (*path, node))
        colour[node] = "black"

    for node in edges:
        visit(node, ())
