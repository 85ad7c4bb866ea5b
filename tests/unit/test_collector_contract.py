"""One contract suite, run over every collector class in ``collectors.registry.COLLECTORS``.

Registering a collector is enough to have it checked here: its source name, the grammar
and prefix of every declared signal, ``up`` and scrape duration, exporter names, that
``scrape`` refuses a signal the collector did not declare, and that every declared signal
is checked by some test.

How "checked by some test" works, for whoever adds a collector: the test module that
asserts values of your collector's signals keeps, at module level, a set literal
``CHECKED_SIGNALS = {"redis.hit_ratio", ...}`` naming every signal whose value one of
its tests asserts. This suite reads those sets from the sources under tests/ (with
``ast``, without importing the modules) and fails for each declared signal that no set
names, and for each name in a set that no collector declares (a stale entry). Name a
signal there only when a test of that module asserts its value; ``up`` and
``scrape_duration_seconds`` count like any other signal.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from collectors.base import Collector, Reading, TargetState, scrape
from collectors.registry import COLLECTORS
from tillwatch.errors import InvalidSample, SourceError
from tillwatch.sample import SIGNAL_PATTERN

TESTS = Path(__file__).parents[1]
LABELS = {"service": "contract", "instance": "contract-1"}
PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

sources = pytest.mark.parametrize("source", sorted(COLLECTORS))


def checked_signals(root: Path = TESTS) -> dict[str, set[str]]:
    """Every ``CHECKED_SIGNALS`` set under ``root``, by the file that holds it."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if _assigns_checked_signals(node):
                names = {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
                found[str(path.relative_to(root))] = {n for n in names if isinstance(n, str)}
    return found


def _assigns_checked_signals(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets = [node.target]
    else:
        return False
    return any(isinstance(t, ast.Name) and t.id == "CHECKED_SIGNALS" for t in targets)


Read = Callable[[Collector, float], Iterable[Reading]]


def bare(cls: type[Collector], read: Read) -> Collector:
    """An instance of ``cls`` whose ``read`` is replaced, built without its target options."""
    subclass = type(f"Bare{cls.__name__}", (cls,), {"read": read, "close": lambda self: None})
    instance = object.__new__(subclass)
    Collector.__init__(instance, labels=LABELS)
    return instance


def by_signal(batch) -> dict[str, float]:
    return {sample.signal: sample.value for sample in batch.samples()}


@sources
def test_registered_under_its_source_name(source):
    assert COLLECTORS[source].source == source


@sources
def test_declared_signals_follow_the_grammar_and_carry_the_source_prefix(source):
    cls = COLLECTORS[source]
    names = [spec.name for spec in cls.signals]
    assert len(names) == len(set(names)), f"{source}: a signal is declared twice"
    for spec in cls.declared().values():
        assert SIGNAL_PATTERN.match(spec.name), spec.name
        # kpi.* signals are business KPIs any source may compute (DESIGN.md).
        assert spec.name.startswith((f"{source}.", "kpi.")), spec.name
        assert spec.unit and spec.help, f"{spec.name} needs a unit and a help text"


@sources
def test_up_and_scrape_duration_are_declared_and_emitted(source):
    cls = COLLECTORS[source]
    assert {f"{source}.up", f"{source}.scrape_duration_seconds"} <= cls.declared().keys()

    healthy = by_signal(scrape(bare(cls, lambda self, now: []), TargetState()))
    assert healthy[f"{source}.up"] == 1.0
    assert healthy[f"{source}.scrape_duration_seconds"] >= 0.0

    def refuse(self, now):
        raise SourceError("refused", f"{source}: contract test target is down")

    state = TargetState()
    failed = by_signal(scrape(bare(cls, refuse), state))
    assert failed[f"{source}.up"] == 0.0
    assert state.error_code == "refused"


@sources
def test_every_declared_signal_passes_the_sample_contract(source):
    cls = COLLECTORS[source]
    readings = [Reading(spec.name, 1.0) for spec in cls.signals]
    batch = scrape(bare(cls, lambda self, now: readings), TargetState())
    assert {spec.name for spec in cls.signals} <= set(by_signal(batch))


@sources
def test_emitting_an_undeclared_signal_raises(source):
    cls = COLLECTORS[source]
    undeclared = f"{source}.never_declared_total"
    collector = bare(cls, lambda self, now: [Reading(undeclared, 1.0)])
    with pytest.raises(InvalidSample) as raised:
        scrape(collector, TargetState())
    assert raised.value.code == "undeclared_signal"


@sources
def test_every_declared_signal_is_checked_by_a_test(source):
    checked = set().union(*checked_signals().values())
    unchecked = sorted(set(COLLECTORS[source].declared()) - checked)
    assert not unchecked, (
        f"{source}: no test module lists {unchecked} in its CHECKED_SIGNALS set; "
        "assert their values in the collector's tests and name them there"
    )


def test_checked_signal_sets_name_declared_signals():
    declared = {name for cls in COLLECTORS.values() for name in cls.declared()}
    for module, names in checked_signals().items():
        ours = {n for n in names if n.split(".", 1)[0] in COLLECTORS}
        stale = sorted(ours - declared)
        assert not stale, f"{module}: CHECKED_SIGNALS names undeclared signals {stale}"


def test_exporter_names_are_valid_and_unique():
    owners: dict[str, str] = {}
    for cls in COLLECTORS.values():
        for spec in cls.declared().values():
            if spec.exporter_name is None:
                continue
            assert PROMETHEUS_NAME.match(spec.exporter_name), spec.exporter_name
            assert spec.exporter_name not in owners, (spec.name, owners.get(spec.exporter_name))
            owners[spec.exporter_name] = spec.name


def test_the_checked_sets_are_found(tmp_path):
    (tmp_path / "test_x.py").write_text('CHECKED_SIGNALS = {"x.up", "x.y_seconds"}\n')
    (tmp_path / "test_y.py").write_text('CHECKED_SIGNALS: set[str] = set()\nOTHER = {"z.up"}\n')
    expected = {"test_x.py": {"x.up", "x.y_seconds"}, "test_y.py": set()}
    assert checked_signals(tmp_path) == expected
