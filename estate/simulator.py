"""A simulated retail estate that speaks :class:`~tillwatch.sample.SampleBatch` like the
collectors do.

The estate: POS stores and a webshop selling for two companies, a warehouse feeding their
stock, Odoo workers behind Traefik, one PostgreSQL primary with streaming replicas,
Redis for sessions and cache, queue_job channels and a nightly pgBackRest backup.

Time runs in simulated days. Each day is computed at once with numpy, one column per
series, in the causal order of the platform, so that a change to a cause is seen by what
depends on it:

    demand -> Traefik requests -> Redis -> Odoo worker saturation -> Traefik latency
    and errors -> checkout path latency -> orders and revenue;
    orders -> queue_job inflow -> backlog -> stock sync delay <- read replica lag.

Every emitted signal and label set is one a real collector in ``collectors/`` declares
(tests/unit/test_estate_signals.py holds them to it). What no collector can see, such as
Odoo's worker saturation, is modelled but not emitted.

An :class:`Effect` perturbs one signal or one hidden *driver* (``driver.*``) while it is
computed, before anything downstream reads it. Random draws come from a generator seeded
with ``(seed, day)``, so a run is the same for a seed whatever the chunk size.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from scipy.special import ndtr

from tillwatch.errors import TillwatchError
from tillwatch.sample import SampleBatch, Series

DAY = 86_400.0
WEEK = 7 * DAY
# Monday 2026-01-05 00:00 UTC: a fixed start keeps runs reproducible.
DEFAULT_EPOCH = 1_767_571_200.0

Op = Literal["multiply", "add", "set", "ramp"]
Hours = tuple[float, float] | None


class SimulatorError(TillwatchError):
    """The estate or an effect asks for something the simulator cannot produce."""

    code = "simulator_invalid"


@dataclass(frozen=True, slots=True)
class Store:
    """One place that sells: a shop with POS tills, or the webshop.

    Attributes:
        name: the ``store`` label.
        company: the ``company`` label.
        sales_channel: ``pos`` or ``website``, as the odoo collector labels orders.
        tills: POS tills; 0 for the webshop.
        hours: opening hours (UTC, from, to) for Monday..Sunday; None when closed.
        peak_orders_per_minute: orders a minute at the busiest hour of an ordinary day.
        basket_eur: mean order value.
    """

    name: str
    company: str
    sales_channel: Literal["pos", "website"]
    tills: int
    hours: tuple[Hours, ...]
    peak_orders_per_minute: float
    basket_eur: float


@dataclass(frozen=True, slots=True)
class Channel:
    """One queue_job channel: where its jobs come from and how fast it drains them.

    Attributes:
        name: the ``channel`` label, e.g. ``root.stock_sync``.
        jobs_per_order: jobs enqueued per POS or web order.
        jobs_per_web_order: extra jobs per web order only.
        baseline_per_minute: jobs a minute that come whatever the orders.
        capacity_per_minute: jobs a minute the channel's workers can finish.
        workers: jobs that can run at once.
    """

    name: str
    jobs_per_order: float
    jobs_per_web_order: float
    baseline_per_minute: float
    capacity_per_minute: float
    workers: int


_SHOP_WEEK: tuple[Hours, ...] = ((9, 19),) * 5 + ((9, 18), None)
DEFAULT_STORES = (
    Store("brussels", "acme_be", "pos", 6, _SHOP_WEEK, 3.0, 42.0),
    Store("antwerp", "acme_be", "pos", 4, ((10, 18),) * 6 + (None,), 2.0, 38.0),
    Store("ghent", "acme_be", "pos", 3, ((9, 18),) * 5 + ((9, 17), None), 1.5, 35.0),
    Store("amsterdam", "acme_nl", "pos", 5, ((9, 21),) * 6 + ((12, 18),), 2.5, 40.0),
    Store("webshop", "acme_be", "website", 0, ((0, 24),) * 7, 4.0, 61.0),
)
# queue_job states the queue collector reports for every channel it has seen.
QUEUE_STATES = ("wait_dependencies", "pending", "enqueued", "started")
BACKUP_RPO_SECONDS = DAY  # the backup collector's default rpo_seconds
DEFAULT_CHANNELS = (
    Channel("root.stock_sync", 1.0, 0.0, 2.0, 60.0, 4),
    Channel("root.webshop", 0.0, 2.0, 1.0, 40.0, 2),
    Channel("root.invoicing", 0.3, 0.0, 0.2, 20.0, 2),
    Channel("root.edi", 0.0, 0.0, 0.5, 5.0, 1),
)


@dataclass(frozen=True, slots=True)
class Estate:
    """The topology and the clock of a simulated estate; the defaults are documented
    in docs/simulator.md.

    Attributes:
        stores: where orders come from.
        channels: queue_job channels.
        odoo_instances: Odoo hosts behind Traefik, each with ``workers_per_instance``.
        odoo_db: the Odoo database the odoo and queue collectors read (their instance).
        replicas: streaming replicas of the primary, by ``application_name``.
        read_replica: the replica stock sync reads from, so its lag delays stock.
        replica_port: the port of each replica's own postgres target.
        routers: Traefik routers, labelled ``<name>@file`` as Traefik's file provider
            names them, all to ``traefik_service``.
        checkout_paths: (sales channel, path prefix) whose access-log quantiles time a
            checkout.
        domains: (domain, days left at the epoch, serial) of each certificate.
        step_seconds: simulated seconds between two samples of a series.
        epoch: simulated time of the start, seconds since the epoch (UTC).
    """

    stores: tuple[Store, ...] = DEFAULT_STORES
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    odoo_instances: tuple[str, ...] = ("odoo-1:8069", "odoo-2:8069")
    workers_per_instance: int = 6
    odoo_db: str = "odoo-db"
    primary: str = "pg-primary:5432"
    replicas: tuple[str, ...] = ("pg-replica-1", "pg-replica-2")
    read_replica: str = "pg-replica-1"
    replica_port: int = 5432
    redis: str = "redis-1:6379"
    traefik: str = "traefik-1:8080"
    routers: tuple[str, ...] = ("pos", "webshop", "backoffice")
    traefik_service: str = "odoo@file"
    checkout_paths: tuple[tuple[str, str], ...] = (
        ("pos", "/pos/checkout"),
        ("website", "/shop/checkout"),
    )
    domains: tuple[tuple[str, float, str], ...] = (
        ("shop.acme.example", 52.0, "3a9f1c"),
        ("pos.acme.example", 75.0, "7be204"),
    )
    stanza: str = "main"
    backup_host: str = "backup-1"
    step_seconds: float = 60.0
    epoch: float = DEFAULT_EPOCH

    def __post_init__(self) -> None:
        if self.step_seconds <= 0 or DAY % self.step_seconds:
            raise SimulatorError(
                f"estate step_seconds={self.step_seconds}: expected a divisor of 86400 "
                "such as 10, 60 or 300; pick one of those"
            )
        if (self.epoch - DEFAULT_EPOCH) % WEEK:
            raise SimulatorError(
                f"estate epoch={self.epoch}: trading hours assume the run starts on a "
                "Monday 00:00 UTC; pick one, such as 1767571200 (2026-01-05)"
            )
        if self.read_replica not in self.replicas:
            raise SimulatorError(
                f"estate read_replica={self.read_replica!r} is not one of the replicas "
                f"{list(self.replicas)}; name one of them"
            )


@dataclass(frozen=True, slots=True)
class Effect:
    """A change to one signal or driver over a window of simulated time.

    Attributes:
        target: an emitted signal (``redis.hit_ratio``) or a driver (``driver.demand``).
        op: ``multiply``, ``add`` or ``set`` by ``value``; ``ramp`` adds ``value`` times
            the fraction of the window elapsed, rising from 0 at the start to ``value``.
        value: the operand.
        start: first affected time, seconds since the epoch.
        end: first time no longer affected.
        labels: only the series whose labels include these.
    """

    target: str
    op: Op
    value: float
    start: float
    end: float
    labels: Mapping[str, str] = field(default_factory=dict)


def _labels(**labels: str) -> dict[str, str]:
    return labels


def store_labels(store: Store, estate: Estate | None = None) -> dict[str, str]:
    """The labels of a store's KPIs, as the odoo collector sets them: its target's
    ``service`` and ``instance``, then ``company``, ``sales_channel`` and, for POS only,
    ``store``."""
    instance = (estate or Estate()).odoo_db
    labels = _labels(service="odoo", instance=instance, company=store.company)
    labels["sales_channel"] = store.sales_channel
    if store.sales_channel == "pos":
        labels["store"] = store.name
    return labels


def companies_of(estate: Estate) -> list[str]:
    """The companies of the estate, in the order their first store is listed."""
    return list(dict.fromkeys(s.company for s in estate.stores))


def checkout_channels(estate: Estate) -> list[str]:
    """The sales channels with a timed checkout path, in :attr:`Estate.checkout_paths` order."""
    return [channel for channel, _ in estate.checkout_paths]


def replica_instance(estate: Estate, replica: str) -> str:
    """The ``instance`` label of a replica's own postgres target."""
    return f"{replica}:{estate.replica_port}"


def layout(estate: Estate) -> dict[str, list[dict[str, str]]]:
    """Every emitted signal of the estate with the labels of each of its series, in
    emission order; each label set is the collector's target labels plus its own."""
    return {
        **_odoo_layout(estate),
        **_traefik_layout(estate),
        **_redis_layout(estate),
        **_postgres_layout(estate),
        **_queue_layout(estate),
        **_backup_layout(estate),
    }


def _odoo_layout(estate: Estate) -> dict[str, list[dict[str, str]]]:
    stores = [store_labels(s, estate) for s in estate.stores]
    target = _labels(service="odoo", instance=estate.odoo_db)
    return {
        "kpi.orders_per_minute": stores,
        "kpi.revenue_per_minute": stores,
        "kpi.stock_sync_delay_seconds": [
            {**target, "company": company} for company in companies_of(estate)
        ],
        "odoo.up": [target],
    }


def _traefik_layout(estate: Estate) -> dict[str, list[dict[str, str]]]:
    target = _labels(service="traefik", instance=estate.traefik)
    # Router readings carry Traefik's own service label, which replaces the target's.
    routers = [
        {**target, "router": f"{r}@file", "service": estate.traefik_service}
        for r in estate.routers
    ]
    paths = [{**target, "path": path} for _, path in estate.checkout_paths]
    return {
        "traefik.requests_per_second": routers,
        "traefik.latency_p95_seconds": routers,
        "traefik.server_error_ratio": routers,
        "traefik.slow_request_ratio": [{**r, "le": f"{_LATENCY_OBJECTIVE:g}"} for r in routers],
        "traefik.path_requests_per_second": paths,
        "traefik.path_latency_p95_seconds": paths,
        "traefik.tls_cert_expiry_days": [
            {**target, "domain": domain, "serial": serial}
            for domain, _, serial in estate.domains
        ],
        "traefik.up": [target],
    }


def _redis_layout(estate: Estate) -> dict[str, list[dict[str, str]]]:
    redis = [_labels(service="redis", instance=estate.redis)]
    return {
        "redis.hit_ratio": redis,
        "redis.evictions_per_second": redis,
        "redis.used_memory_ratio": redis,
        "redis.up": redis,
    }


def _postgres_layout(estate: Estate) -> dict[str, list[dict[str, str]]]:
    primary = _labels(service="postgres", instance=estate.primary)
    senders = [{**primary, "replica": r} for r in estate.replicas]
    standbys = [
        _labels(service="postgres", instance=replica_instance(estate, replica))
        for replica in estate.replicas
    ]
    return {
        "postgres.replica_lag_seconds": senders,
        "postgres.replica_lag_bytes": senders,
        "postgres.replica_connected": senders,
        "postgres.replicas_connected": [primary],
        "postgres.replication_lag_seconds": standbys,
        "postgres.wal_receiver_streaming": standbys,
        "postgres.up": [primary, *standbys],
    }


def _queue_layout(estate: Estate) -> dict[str, list[dict[str, str]]]:
    target = _labels(service="queue", instance=estate.odoo_db)
    return {
        "queue.depth": [
            {**target, "channel": c.name, "state": state}
            for c in estate.channels
            for state in QUEUE_STATES
        ],
        "queue.oldest_pending_age_seconds": [
            {**target, "channel": c.name} for c in estate.channels
        ],
        "queue.up": [target],
    }


def _backup_layout(estate: Estate) -> dict[str, list[dict[str, str]]]:
    target = _labels(service="backup", instance=estate.backup_host)
    stanza = {**target, "stanza": estate.stanza}
    return {
        "backup.last_success_age_seconds": [
            {**stanza, "backup_type": kind} for kind in ("full", "diff")
        ],
        "backup.stanza_status": [stanza],
        "backup.stale": [stanza],
        "backup.up": [target],
    }


def drivers(estate: Estate) -> dict[str, list[dict[str, str]]]:
    """The hidden causes an effect may perturb, each 1.0 when nothing is wrong."""
    return {
        "driver.demand": [
            _labels(store=s.name, company=s.company, sales_channel=s.sales_channel)
            for s in estate.stores
        ],
        "driver.odoo_workers": [_labels(instance=i) for i in estate.odoo_instances],
        "driver.redis_working_set": [_labels(instance=estate.redis)],
        "driver.replication_streaming": [_labels(replica=r) for r in estate.replicas],
        "driver.queue_capacity": [_labels(channel=c.name) for c in estate.channels],
        "driver.backup_success": [_labels(stanza=estate.stanza)],
    }


def targets(estate: Estate) -> dict[str, list[dict[str, str]]]:
    """Everything an effect may target: emitted signals and drivers."""
    return {**layout(estate), **drivers(estate)}


@dataclass(slots=True)
class _Carry:
    """What one simulated day hands to the next."""

    backlog: np.ndarray  # jobs pending per channel
    last_streaming: np.ndarray  # last time each replica was streaming
    last_full: float
    last_diff: float


_OPS: dict[str, Callable[[np.ndarray, float, np.ndarray], np.ndarray]] = {
    "multiply": lambda block, value, progress: block * value,
    "add": lambda block, value, progress: block + value,
    "set": lambda block, value, progress: np.full_like(block, value),
    "ramp": lambda block, value, progress: block + progress[:, None] * value,
}


class _Day:
    """The columns of one simulated day, with the effects applied as they are computed."""

    def __init__(self, sim: Simulator, day: int) -> None:
        step = sim.estate.step_seconds
        start = self.start = sim.estate.epoch + day * DAY
        self.t = start + step * np.arange(1, int(DAY / step) + 1)
        self.hour = (self.t - start) / 3600.0
        self.weekday = day % 7
        self._seed = (sim.seed, day)
        self.values: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}
        self.layout = sim.layout
        self._sim = sim

    @property
    def steps(self) -> int:
        return int(self.t.shape[0])

    def put(self, name: str, values: np.ndarray) -> np.ndarray:
        """Apply the effects on ``name`` to its columns, store and return them."""
        values = np.array(values, dtype=np.float64).reshape(self.steps, -1)
        for effect, columns in self._sim.effects_on(name):
            rows = (self.t >= effect.start) & (self.t < effect.end)
            if not rows.any():
                continue
            progress = (self.t[rows] - effect.start) / (effect.end - effect.start)
            block = values[np.ix_(rows, columns)]
            values[np.ix_(rows, columns)] = _OPS[effect.op](block, effect.value, progress)
        self.values[name] = values
        return values

    def driver(self, name: str) -> np.ndarray:
        width = len(self._sim.targets[name])
        return self.put(name, np.ones((self.steps, width)))

    def rng(self, part: str) -> np.random.Generator:
        """A generator of its own for each part of the model, so that an effect on one
        part leaves the random draws of every other part as they were."""
        return np.random.default_rng([*self._seed, zlib.crc32(part.encode())])

    def noise(self, part: str, scale: float, width: int = 1) -> np.ndarray:
        """Multiplicative noise around 1."""
        return np.exp(self.rng(part).normal(0.0, scale, (self.steps, width)))

    def poisson(self, part: str, mean: np.ndarray) -> np.ndarray:
        """Poisson counts drawn by inversion, so that a changed mean at one step does not
        shift the draws of the steps after it."""
        uniform = self.rng(part).random(np.shape(mean))
        return _poisson_quantile(uniform, np.asarray(mean, dtype=np.float64))


def _poisson_quantile(uniform: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The smallest k whose Poisson(mean) CDF reaches ``uniform``, for every element.

    Walks the CDF one k at a time for the elements not yet placed; means here stay in
    the tens, where that takes a few dozen vectorised steps. Means above about 700
    underflow ``exp(-mean)`` and are out of range.
    """
    flat_u, flat_mean = uniform.ravel(), np.maximum(mean.ravel(), 0.0)
    counts = np.zeros(flat_u.shape)
    todo = np.arange(flat_u.size)
    term = np.exp(-flat_mean)
    cdf = term.copy()
    k = 0
    # The bound stops the walk where rounding keeps the CDF just under a uniform near 1.
    limit = int(flat_mean.max(initial=0.0) + 12 * np.sqrt(flat_mean.max(initial=0.0)) + 30)
    while todo.size and k < limit:
        todo = todo[flat_u[todo] > cdf[todo]]
        k += 1
        term[todo] *= flat_mean[todo] / k
        cdf[todo] += term[todo]
        counts[todo] = k
    return counts.reshape(uniform.shape)


class Simulator:
    """Generates the samples of a simulated estate.

    Args:
        estate: the topology and clock.
        seed: seeds every random draw; the same seed gives the same samples.
        effects: perturbations to apply, e.g. from :mod:`estate.scenarios`.

    Raises:
        SimulatorError: when an effect targets a signal, driver or labels the estate
            does not have.
    """

    def __init__(
        self, estate: Estate | None = None, *, seed: int = 0, effects: Sequence[Effect] = ()
    ) -> None:
        self.estate = estate or Estate()
        self.seed = seed
        self.targets = targets(self.estate)
        self.layout = layout(self.estate)
        self.series = [
            Series.of(signal, labels)
            for signal, label_list in self.layout.items()
            for labels in label_list
        ]
        self._effects: dict[str, list[tuple[Effect, np.ndarray]]] = {}
        for effect in effects:
            self._add_effect(effect)

    def _add_effect(self, effect: Effect) -> None:
        label_list = self.targets.get(effect.target)
        if label_list is None:
            raise SimulatorError(
                f"effect target {effect.target!r} is neither a signal nor a driver of the "
                f"estate; use one of {sorted(self.targets)}"
            )
        columns = [
            ix
            for ix, labels in enumerate(label_list)
            if all(labels.get(k) == v for k, v in effect.labels.items())
        ]
        if not columns:
            raise SimulatorError(
                f"effect on {effect.target}: no series has labels {dict(effect.labels)}; "
                f"its series are {label_list}"
            )
        if effect.end <= effect.start:
            raise SimulatorError(f"effect on {effect.target}: end must come after start")
        if effect.op not in _OPS:
            raise SimulatorError(
                f"effect on {effect.target}: op {effect.op!r} is not one of {sorted(_OPS)}"
            )
        self._effects.setdefault(effect.target, []).append((effect, np.asarray(columns)))

    def effects_on(self, name: str) -> list[tuple[Effect, np.ndarray]]:
        """The effects on one signal or driver, with the column of each series they hit."""
        return self._effects.get(name, [])

    def run(self, duration: float = WEEK, chunk_steps: int = 60) -> Iterator[SampleBatch]:
        """Yield the samples of ``duration`` simulated seconds, oldest first.

        Each batch holds ``chunk_steps`` steps of every series (fewer at the end of a
        simulated day: a batch never spans midnight), ordered by time then series.

        Args:
            duration: simulated seconds to generate, from the estate's epoch.
            chunk_steps: steps per batch; 1 gives one batch per scrape.

        Raises:
            SimulatorError: when ``chunk_steps`` is not positive.
        """
        if chunk_steps < 1:
            raise SimulatorError(f"chunk_steps={chunk_steps}: expected 1 or more")

        end = self.estate.epoch + duration
        carry = self._initial_carry()
        for day_ix in range(int(np.ceil(duration / DAY))):
            day = _Day(self, day_ix)
            carry = _simulate_day(day, self.estate, carry)
            yield from self._batches(day, end, chunk_steps)

    def _initial_carry(self) -> _Carry:
        # As if the estate had run healthy up to the epoch: last full backup on Sunday.
        last_backup = self.estate.epoch - DAY + _BACKUP_DONE_HOUR * 3600
        return _Carry(
            backlog=np.zeros(len(self.estate.channels)),
            last_streaming=np.full(len(self.estate.replicas), self.estate.epoch),
            last_full=last_backup,
            last_diff=last_backup,
        )

    def _batches(self, day: _Day, end: float, chunk_steps: int) -> Iterator[SampleBatch]:
        values = np.hstack([day.values[name] for name in self.layout])
        present = np.hstack(
            [
                day.present.get(name, np.ones(day.values[name].shape, dtype=bool))
                for name in self.layout
            ]
        )
        width = len(self.series)
        columns = np.arange(width, dtype=np.uint32)
        for first in range(0, day.steps, chunk_steps):
            rows = slice(first, min(first + chunk_steps, day.steps))
            ts = day.t[rows]
            keep = (present[rows] & (ts <= end)[:, None]).ravel()
            if not keep.any():
                return
            batch = SampleBatch(
                series=self.series,
                series_ix=np.tile(columns, ts.shape[0]),
                ts=np.repeat(ts, width),
                value=values[rows].ravel(),
            )
            yield batch.select(keep)


# --- the causal model, one function per part of the platform, in causal order ---------

_BACKUP_DONE_HOUR = 1.0 + 40 / 60  # nightly backup starts 01:00 and takes 40 minutes
_SERVICE_SECONDS = 0.35  # Odoo worker time per request
_ROUTER_LATENCY = {"pos": 0.12, "webshop": 0.35, "backoffice": 0.5}
# The latency SLO's threshold: a Traefik default bucket well above every router's usual p95.
_LATENCY_OBJECTIVE = 1.2
_LATENCY_SPREAD = 0.5  # sigma of log latency: request latencies are log-normal around the p95
_P95_Z = 1.645  # the standard normal's 95th percentile
_CHECKOUT_BUDGET = {"pos": 2.5, "website": 4.0}  # seconds a customer tolerates before leaving
_WEEKDAY_FACTOR = {
    "pos": (0.8, 0.85, 0.9, 0.95, 1.1, 1.4, 0.9),
    "website": (1.1, 1.0, 1.0, 1.0, 0.95, 1.1, 1.25),
}


def _simulate_day(day: _Day, estate: Estate, carry: _Carry) -> _Carry:
    """Compute every signal of one day into ``day.values``; return the next day's carry."""
    demand = _demand(day, estate)
    load = _traefik_requests(day, estate, demand)
    hit_ratio = _redis(day, load)
    saturation = _odoo(day, estate, load, hit_ratio)
    _traefik_latency(day, estate, saturation)
    _checkout(day, estate, demand)
    carry = _replication(day, estate, load, carry)
    carry = _queue(day, estate, carry)
    _stock_sync(day, estate)
    carry = _backup(day, estate, carry)
    _tls(day, estate)
    _up(day)
    return carry


def _open_mask(day: _Day, store: Store) -> np.ndarray:
    hours = store.hours[day.weekday]
    if hours is None:
        return np.zeros(day.steps, dtype=bool)
    # A sample describes the step ending at its ts: the step ending at opening time sells
    # nothing, the one ending at closing time still does.
    return (day.hour > hours[0]) & (day.hour <= hours[1])


def _profile(day: _Day, channel: str) -> np.ndarray:
    """Share of the peak demand at each step: lunch and after-work for shops, evening
    for the webshop."""
    h = day.hour
    if channel == "pos":
        bumps = np.exp(-(((h - 12.5) / 1.6) ** 2)) + 0.8 * np.exp(-(((h - 17.0) / 1.5) ** 2))
        return 0.35 + 0.65 * bumps
    bumps = 0.45 * np.exp(-(((h - 12.5) / 2.0) ** 2)) + np.exp(-(((h - 20.5) / 2.0) ** 2))
    return 0.06 + 0.94 * bumps


def _demand(day: _Day, estate: Estate) -> np.ndarray:
    """Orders a minute customers would place if the platform were perfect, per store."""
    columns = []
    for store in estate.stores:
        weekly = _WEEKDAY_FACTOR[store.sales_channel][day.weekday]
        open_now = _open_mask(day, store)
        columns.append(
            store.peak_orders_per_minute
            * weekly
            * _profile(day, store.sales_channel)
            * open_now
        )

    wanted = np.column_stack(columns) * day.noise("demand", 0.05, len(estate.stores))
    return wanted * day.driver("driver.demand")


def _traefik_requests(day: _Day, estate: Estate, demand: np.ndarray) -> np.ndarray:
    """Requests a second per router; returns the total load on Odoo."""
    pos = np.array([s.sales_channel == "pos" for s in estate.stores])
    tills_open = (demand[:, pos] > 0) @ np.array(
        [s.tills for s in estate.stores if s.sales_channel == "pos"]
    )
    browsing = 0.5 * _profile(day, "website") * day.values["driver.demand"][:, ~pos].sum(axis=1)
    office = (day.weekday < 5) & (day.hour > 8) & (day.hour <= 18)
    per_router = {
        "pos": demand[:, pos].sum(axis=1) * 30 / 60 + 0.02 * tills_open,
        "webshop": demand[:, ~pos].sum(axis=1) * 80 / 60 + browsing,
        "backoffice": 0.1 + 1.9 * office,
    }
    rate = np.column_stack([per_router.get(r, np.full(day.steps, 0.5)) for r in estate.routers])
    rate = day.put(
        "traefik.requests_per_second", rate * day.noise("requests", 0.05, len(estate.routers))
    )
    return rate.sum(axis=1)


def _redis(day: _Day, load: np.ndarray) -> np.ndarray:
    """Memory, evictions and hit ratio; a working set beyond maxmemory evicts hot keys."""
    working_set = day.driver("driver.redis_working_set")[:, 0]
    need = 0.68 * working_set * (1 + 0.06 * load / 15.0)
    overflow = np.maximum(0.0, need - 0.97)

    used = np.minimum(need, 0.985) + day.rng("redis.memory").normal(0, 0.004, day.steps)
    day.put("redis.used_memory_ratio", np.clip(used, 0.0, 1.0))
    evictions = overflow * 6000 * day.noise("redis.evictions", 0.2)[:, 0]
    evictions += day.rng("redis.expiry").exponential(0.05, day.steps)
    day.put("redis.evictions_per_second", evictions)
    hit = 0.965 - 1.5 * overflow + day.rng("redis.hits").normal(0, 0.003, day.steps)
    return day.put("redis.hit_ratio", np.clip(hit, 0.0, 1.0))[:, 0]


def _odoo(day: _Day, estate: Estate, load: np.ndarray, hit_ratio: np.ndarray) -> np.ndarray:
    """Worker saturation per instance; cache misses make every request cost more.

    Modelled, not emitted: no collector reads Odoo's worker pool, so it shows only through
    Traefik's latency and errors, as it would in a real estate."""
    cost = _SERVICE_SECONDS * (1 + 3 * np.maximum(0.0, 0.965 - hit_ratio))
    busy = (load * cost / len(estate.odoo_instances))[:, None]
    workers = estate.workers_per_instance * day.driver("driver.odoo_workers")
    width = len(estate.odoo_instances)
    saturation = busy / np.maximum(workers, 1e-3) + day.rng("odoo").normal(
        0, 0.015, (day.steps, width)
    )
    return np.clip(saturation, 0.0, 1.0)


def _traefik_latency(day: _Day, estate: Estate, saturation: np.ndarray) -> None:
    """p95 latency and 5xx ratio per router: queueing delay grows as 1 / (1 - load)."""
    rho = np.minimum(saturation.mean(axis=1), 0.97)[:, None]
    base = np.array([_ROUTER_LATENCY.get(r, 0.3) for r in estate.routers])
    width = len(estate.routers)
    latency = base * (0.3 + 0.7 / (1 - rho)) * day.noise("latency", 0.08, width)
    day.put("traefik.latency_p95_seconds", latency)
    _slow_requests(day, estate, latency)

    errors = 0.0015 * day.noise("errors", 0.3, width) + 1.2 * np.maximum(0.0, rho - 0.9)
    day.put("traefik.server_error_ratio", np.clip(errors, 0.0, 1.0))


def _slow_requests(day: _Day, estate: Estate, p95: np.ndarray) -> None:
    """Share of each router's requests slower than the latency objective, for log-normal
    latencies with that p95, with the sampling noise of the step's request count."""
    z = np.log(_LATENCY_OBJECTIVE / p95) / _LATENCY_SPREAD + _P95_Z
    share = ndtr(-z)
    rate = day.values["traefik.requests_per_second"]
    requests = np.maximum(rate * estate.step_seconds, 1.0)
    # Normal draws, one per value: an effect on one step leaves the others' draws alone.
    spread = np.sqrt(share * (1 - share) / requests)
    noise = day.rng("slow").normal(0.0, 1.0, share.shape) * spread
    day.put("traefik.slow_request_ratio", np.clip(share + noise, 0.0, 1.0))


def _checkout(day: _Day, estate: Estate, demand: np.ndarray) -> None:
    """Checkout latency per sales channel, from Traefik's access log on the checkout path,
    and the share of failing requests on each store's router; slow or failing checkouts
    lose orders."""
    router = {"pos": "pos", "website": "webshop"}
    channels = checkout_channels(estate)
    paths = [estate.routers.index(router[channel]) for channel in channels]
    latency = (
        day.values["traefik.latency_p95_seconds"][:, paths]
        * 2.2
        * day.noise("checkout.latency", 0.1, len(channels))
    )
    latency = day.put("traefik.path_latency_p95_seconds", latency)
    sales = np.column_stack(
        [demand[:, [s.sales_channel == c for s in estate.stores]].sum(axis=1) for c in channels]
    )
    noise = day.noise("checkout.requests", 0.1, len(channels))
    day.put("traefik.path_requests_per_second", sales / 60 * noise)
    # No checkout, no duration in the access log: the collector sends no quantile.
    day.present["traefik.path_latency_p95_seconds"] = sales > 0

    of_store = [channels.index(s.sales_channel) for s in estate.stores]
    errors = day.values["traefik.server_error_ratio"][
        :, [estate.routers.index(router[s.sales_channel]) for s in estate.stores]
    ]
    budget = np.array([_CHECKOUT_BUDGET[s.sales_channel] for s in estate.stores])
    lost = np.clip(0.5 * (latency[:, of_store] / budget - 1), 0.0, 0.8) + errors
    minutes = estate.step_seconds / 60
    bought = day.poisson("orders", demand * np.clip(1 - lost, 0.1, 1) * minutes) / minutes
    orders = day.put("kpi.orders_per_minute", bought)
    basket = np.array([s.basket_eur for s in estate.stores])
    spread = 1 + day.rng("revenue").normal(0, 0.25, orders.shape) / np.sqrt(
        np.maximum(orders, 1)
    )
    day.put("kpi.revenue_per_minute", np.maximum(orders * basket * spread, 0.0))


def _replication(day: _Day, estate: Estate, load: np.ndarray, carry: _Carry) -> _Carry:
    """Lag per replica, seen from both ends as the postgres collector reads them.

    The primary reports each streaming standby's replay lag; a standby that stops
    streaming has no WAL sender, so its lag series stop and ``replica_connected`` reads 0,
    while it falls behind by wall time. The standby's own collector reports its replay
    lag, which reads 0 once its receiver is down (nothing received is left to replay).
    """
    streaming = day.driver("driver.replication_streaming") >= 0.5
    since = np.where(streaming, day.t[:, None], -np.inf)
    since = np.fmax.accumulate(np.vstack([carry.last_streaming, since]), axis=0)[1:]
    width = len(estate.replicas)
    normal = 0.03 + 0.15 * (load / 15.0)[:, None] * day.rng("replication").exponential(
        1.0, (day.steps, width)
    )
    lag = day.put(
        "postgres.replica_lag_seconds", np.where(streaming, normal, day.t[:, None] - since)
    )

    wal_bytes_per_second = 150_000 * (0.3 + load / 15.0)[:, None]
    day.put("postgres.replica_lag_bytes", np.round(lag * wal_bytes_per_second))
    day.present["postgres.replica_lag_seconds"] = streaming
    day.present["postgres.replica_lag_bytes"] = streaming
    day.put("postgres.replica_connected", streaming.astype(np.float64))
    day.put("postgres.replicas_connected", streaming.sum(axis=1))
    day.put("postgres.replication_lag_seconds", np.where(streaming, lag, 0.0))
    day.put("postgres.wal_receiver_streaming", streaming.astype(np.float64))
    return replace(carry, last_streaming=since[-1])


def _queue(day: _Day, estate: Estate, carry: _Carry) -> _Carry:
    """Depth per channel and state; a backlog grows whenever inflow beats capacity."""
    orders = day.values["kpi.orders_per_minute"]
    web = orders[:, [s.sales_channel == "website" for s in estate.stores]].sum(axis=1)
    minutes = estate.step_seconds / 60
    jobs_per_order = np.array([c.jobs_per_order for c in estate.channels])
    jobs_per_web_order = np.array([c.jobs_per_web_order for c in estate.channels])
    baseline = np.array([c.baseline_per_minute for c in estate.channels])
    expected = (
        orders.sum(axis=1)[:, None] * jobs_per_order
        + web[:, None] * jobs_per_web_order
        + baseline
    )
    inflow = day.poisson("queue.inflow", expected * minutes)
    capacity = np.array([c.capacity_per_minute for c in estate.channels]) * minutes
    capacity = capacity * day.driver("driver.queue_capacity")

    backlog = _backlog(carry.backlog, inflow - capacity)
    done = np.vstack([carry.backlog, backlog])[:-1] + inflow - backlog
    # Jobs that arrived during the step and were not picked up yet, even with no backlog.
    pending = backlog + day.poisson("queue.pending", 0.15 * inflow)
    workers = np.array([c.workers for c in estate.channels])
    started = np.minimum(workers, np.ceil(done / np.maximum(capacity, 1e-9) * workers))
    handed_out = day.poisson("queue.enqueued", np.full(pending.shape, 0.3)) + (pending > 0) * 2
    enqueued = np.minimum(pending, handed_out)
    # No job here waits on another, so wait_dependencies stays 0 as in most estates.
    waiting = np.zeros_like(pending)
    depth = np.stack([waiting, pending, enqueued, started], axis=2).reshape(day.steps, -1)
    day.put("queue.depth", depth)

    # First in, first out: the oldest job waits about as long as the backlog takes to drain.
    drain_seconds = pending / np.maximum(capacity, 1e-3) * estate.step_seconds
    waited = day.rng("queue.age").uniform(1.0, 20.0, pending.shape)
    day.put(
        "queue.oldest_pending_age_seconds", np.where(pending > 0, drain_seconds + waited, 0)
    )
    return replace(carry, backlog=backlog[-1])


def _backlog(start: np.ndarray, surplus: np.ndarray) -> np.ndarray:
    """Lindley's recursion q[t] = max(0, q[t-1] + surplus[t]), vectorised over time:
    q[t] = max(q0 + S[t], S[t] - min(S[1..t])) with S the running sum of the surplus."""
    total = np.cumsum(surplus, axis=0)
    lowest = np.minimum.accumulate(total, axis=0)
    return np.maximum(start + total, total - lowest)


def _stock_sync(day: _Day, estate: Estate) -> None:
    """How late each company's stock moves reach the stores and the webshop: the sync
    job's wait in its queue plus the lag of the replica it reads from."""
    replica = estate.replicas.index(estate.read_replica)
    # The true lag: a standby that stopped streaming serves ever older data.
    lag = day.values["postgres.replica_lag_seconds"][:, replica]
    channel = [c.name for c in estate.channels].index("root.stock_sync")
    wait = day.values["queue.oldest_pending_age_seconds"][:, channel]
    width = len(companies_of(estate))
    cron = 20 + 20 * day.rng("stock_sync").random((day.steps, width))
    day.put("kpi.stock_sync_delay_seconds", cron + (lag + wait)[:, None])


def _backup(day: _Day, estate: Estate, carry: _Carry) -> _Carry:
    """Age of the last good full and diff backup; the nightly run fails when the driver
    says so, leaving the ages to grow. The stanza itself stays healthy (status 0): a failed
    run shows as a backup older than the RPO, ``backup.stale``."""
    success = day.driver("driver.backup_success")[:, 0] >= 0.5
    done_at = day.start + _BACKUP_DONE_HOUR * 3600
    finished = day.t >= done_at
    ok = bool(success[np.argmax(finished)])
    is_full = day.weekday == 6

    last_full = np.where(finished & ok & is_full, done_at, carry.last_full)
    last_diff = np.where(finished & ok, done_at, carry.last_diff)
    ages = np.column_stack([day.t - last_full, day.t - np.maximum(last_full, last_diff)])
    ages = day.put("backup.last_success_age_seconds", ages)
    day.put("backup.stanza_status", np.zeros(day.steps))
    day.put("backup.stale", (ages.min(axis=1) > BACKUP_RPO_SECONDS).astype(np.float64))
    return replace(carry, last_full=float(last_full[-1]), last_diff=float(last_diff[-1]))


def _tls(day: _Day, estate: Estate) -> None:
    """Days left on each certificate; ACME renews to 90 days when 30 are left."""
    elapsed = (day.t - estate.epoch) / DAY
    # A renewed certificate keeps its series here; a real renewal brings a new serial.
    days = [30 + np.mod(left - 30 - elapsed, 60) for _, left, _ in estate.domains]
    day.put("traefik.tls_cert_expiry_days", np.column_stack(days))


def _up(day: _Day) -> None:
    """Every simulated target answers its scrape unless an effect says otherwise."""
    for name, label_list in day.layout.items():
        if name.endswith(".up"):
            day.put(name, np.ones((day.steps, len(label_list))))


def by_series(batches: Iterator[SampleBatch] | Sequence[SampleBatch]) -> dict[str, np.ndarray]:
    """Gather batches into one ``(n, 2)`` array of ``(ts, value)`` rows per series key,
    in time order; handy for tests, notebooks and plots.

    Args:
        batches: batches of one run, e.g. ``Simulator(...).run()``.

    Returns:
        Each series' canonical key mapped to its rows.
    """
    index: dict[str, int] = {}
    ids, ts, values = [], [], []
    for batch in batches:
        local = np.array([index.setdefault(s.key, len(index)) for s in batch.series], np.int64)
        ids.append(local[batch.series_ix])
        ts.append(batch.ts)
        values.append(batch.value)
    if not index:
        return {}

    series, when, value = np.concatenate(ids), np.concatenate(ts), np.concatenate(values)
    order = np.lexsort((when, series))
    bounds = np.searchsorted(series[order], np.arange(len(index) + 1))
    rows = np.column_stack([when[order], value[order]])
    return {key: rows[bounds[n] : bounds[n + 1]] for key, n in index.items()}
