"""Every collector class by its source name: the config layer and the contract suite read it.

Add one line per source. tests/unit/test_collector_contract.py runs its generic suite over
every entry, so a new collector is checked as soon as it is registered here.
"""

from __future__ import annotations

from collectors.backup import BackupCollector
from collectors.base import Collector
from collectors.odoo import OdooCollector
from collectors.postgres import PostgresCollector
from collectors.queue import QueueCollector
from collectors.redis import RedisCollector
from collectors.traefik import TraefikCollector

COLLECTORS: dict[str, type[Collector]] = {
    "backup": BackupCollector,
    "odoo": OdooCollector,
    "postgres": PostgresCollector,
    "queue": QueueCollector,
    "redis": RedisCollector,
    "traefik": TraefikCollector,
}
