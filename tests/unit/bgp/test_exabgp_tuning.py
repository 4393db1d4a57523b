"""bgp.exabgp.tuning: each patch's behaviour, tested on the wrapped functions (the classes of this test
process stay unpatched), and that all of them still fit the pinned ExaBGP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
from exabgp.bgp.message.update.attribute import Attribute
from exabgp.bgp.neighbor import Neighbor
from exabgp.logger import log as exabgp_log
from exabgp.logger.option import option as exabgp_log_option
from exabgp.protocol.family import AFI
from exabgp.protocol.ip import IP
from exabgp.reactor.api import API
from exabgp.reactor.api.command import Command
from exabgp.reactor.asynchronous import ASYNC

from bgp.exabgp import tuning


def test_every_patch_fits_the_installed_exabgp():
    # In a child: apply() patches classes for the whole process.
    script = "import json; from bgp.exabgp import tuning; print(json.dumps(tuning.apply()))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [
        "async", "poll", "remove_self", "api_log", "api_errors", "nlri_sort", "api_bulk", "api_cache",
        "api_lazy_log", "json_nlri", "log_gate", "family_index", "afi_create", "safi_create", "notify_arity",
        "api_direct", "idle", "ribout_compact"
    ]
    assert out.stderr == ""


def test_named_patches_can_be_left_out_for_a_measurement():
    script = "import json; from bgp.exabgp import tuning; print(json.dumps(tuning.apply()))"
    env = {**os.environ, tuning.TUNING_ENV: "skip:api_bulk,log_gate"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    applied = json.loads(out.stdout)
    assert "api_bulk" not in applied and "log_gate" not in applied
    assert len(applied) == len(tuning.PATCHES) - 2 and out.stderr == ""


class _QuietLog:
    """ExaBGP's logger needs its environment loaded; these tests only need the calls to go somewhere."""

    def __init__(self):
        self.errors = []

    def debug(self, message, source=""):
        pass

    def error(self, message, source=""):
        self.errors.append(message())


@pytest.fixture(autouse=True)
def quiet_log(monkeypatch):
    stub = _QuietLog()
    monkeypatch.setattr("exabgp.reactor.asynchronous.log", stub)
    monkeypatch.setattr("exabgp.logger.log", stub)
    return stub


def _counting(name, steps, trace):
    for i in range(steps):
        trace.append((name, i))
        yield


def _jobs(limit, **generators):
    jobs = ASYNC()
    jobs.LIMIT = limit
    trace = []
    for name, steps in generators.items():
        jobs.schedule(name, name, _counting(name, steps, trace))
    return jobs, trace


@pytest.mark.parametrize(
    ("limit", "steps", "runs_until_idle"),
    [
        (1000, {"a": 3, "b": 2}, 1),  # everything in one loop
        (2, {"a": 3, "b": 2}, 4),  # 7 next() calls (each StopIteration counts, as upstream), 2 per loop
        (1000, {}, 0),
    ],
)
def test_async_runs_generators_in_order_limit_steps_per_loop(limit, steps, runs_until_idle):
    jobs, trace = _jobs(limit, **steps)
    run = tuning._sync_run(ASYNC.run)
    runs = 0
    while run(jobs):
        runs += 1
    if steps:
        runs += 1  # the last call did work and reported that nothing is left
    assert runs == runs_until_idle
    assert trace == [(name, i) for name, n in steps.items() for i in range(n)]
    assert jobs.ready()
    assert getattr(jobs, "worked", False) is bool(steps)


def test_async_failure_tells_the_service_and_goes_on(quiet_log):
    jobs = ASYNC()
    told = []
    jobs.set_error_handler(told.append)

    def broken():
        raise ValueError("bad nlri")
        yield

    trace = []
    jobs.schedule("bad", "x", broken())
    jobs.schedule("good", "y", _counting("good", 2, trace))
    tuning._sync_run(ASYNC.run)(jobs)
    assert told == ["bad"]
    assert quiet_log.errors == ["async | bad | problem with function: bad nlri"]
    assert trace == [("good", 0), ("good", 1)]


def test_async_coroutines_take_the_upstream_path():
    jobs = ASYNC()
    done = []

    async def coro():
        done.append(1)

    pending = coro()
    jobs.schedule("c", "c", pending)
    called = []

    def upstream(self):
        called.append(self)
        return False

    assert tuning._sync_run(upstream)(jobs) is False
    assert called == [jobs] and done == []
    pending.close()


@pytest.mark.parametrize(
    ("worked", "ready", "given", "expected"),
    [
        (False, True, 100, 100),  # idle: the tick
        (False, True, 0, 0),  # a peer asked to run again
        (False, False, 100, 0),  # commands still queued
        (True, True, 100, 0),  # the last chunk just ran: peers get a turn first
    ],
)
def test_poll_timeout_is_zero_while_there_is_work(worked, ready, given, expected):
    jobs = SimpleNamespace(worked=worked, ready=lambda: ready)
    seen = []
    wait = tuning._work_conserving_wait(lambda self, sleeptime: seen.append(sleeptime) or iter(()))
    list(wait(SimpleNamespace(asynchronous=jobs), given))
    assert seen == [expected]
    assert jobs.worked is False


def _change(nexthop):
    return SimpleNamespace(nlri=SimpleNamespace(nexthop=nexthop, afi=AFI.ipv4), attributes={})


def test_remove_self_shares_a_route_with_an_explicit_next_hop():
    neighbor = Neighbor()
    change = _change(IP.create("10.0.0.11"))
    assert tuning._remove_self_sharing(Neighbor.remove_self)(neighbor, change) is change


def test_remove_self_still_copies_and_rewrites_next_hop_self():
    neighbor = Neighbor()
    neighbor.ip_self = lambda afi: IP.create("10.0.0.12")
    change = _change(SimpleNamespace(SELF=True))
    change.attributes[Attribute.CODE.NEXT_HOP] = "placeholder"
    out = tuning._remove_self_sharing(Neighbor.remove_self)(neighbor, change)
    assert out is not change
    assert str(out.nlri.nexthop) == "10.0.0.12"
    assert str(out.attributes[Attribute.CODE.NEXT_HOP]) == "10.0.0.12"
    assert change.nlri.nexthop.SELF is True  # the caller's route is untouched


class _Nlri:
    def __init__(self, key):
        self.key, self.indexed = key, 0

    def index(self):
        self.indexed += 1
        return self.key

    def __lt__(self, other):
        return self.index() < other.index()


def test_nlri_sort_keeps_upstreams_order_and_builds_each_index_once_up_front():
    keys = [b"0101" + bytes([n % 7, n]) for n in range(200, 0, -1)]
    update = SimpleNamespace(nlris=[_Nlri(k) for k in keys])
    seen = []

    def upstream(self, negotiated):
        seen.append([n.key for n in sorted(self.nlris)])  # what upstream does with the list
        return "split"

    assert tuning._presorted_split(upstream)(update, None) == "split"
    assert seen == [sorted(keys)]
    # one index per NLRI for our sort, then a linear pass of upstream's comparisons (2 per pair)
    assert sum(n.indexed for n in update.nlris) <= len(keys) + 2 * (len(keys) - 1)


def test_read_messages_report_of_its_own_error_is_skipped_and_every_other_call_passes():
    from exabgp.reactor.api.processes import Processes

    calls = []

    def upstream(self, *args):
        calls.append(args)

    patched = tuning._notification_arity(upstream)
    # What Protocol.read_message passes on a header error, extra None included: upstream raises TypeError.
    with pytest.raises(TypeError):
        Processes.notification(SimpleNamespace(silence=False), "n", "receive", 1, 1, "bad", None, b"h", b"b")
    assert patched(None, "n", "receive", 1, 1, "bad", None, b"h", b"b") is None
    patched(None, "n", "receive", 6, 2, "cease", b"h", b"b")  # every other caller, unchanged
    assert calls == [("n", "receive", 6, 2, "cease", b"h", b"b")]


class _Recorder:
    """Stands in for the stdlib logger ExaBGP writes through; keeps (level, line)."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda line: self.lines.append((level.upper(), line))


@pytest.fixture
def exabgp_logging(monkeypatch):
    """ExaBGP's own logging as our ExaBGP child runs it (level INFO, API lines enabled), recorded."""
    option = exabgp_log_option
    recorder = _Recorder()
    monkeypatch.setattr("exabgp.logger.log", exabgp_log)  # undo quiet_log: the wrapper imports it per call
    monkeypatch.setattr(option, "logger", recorder)
    monkeypatch.setattr(option, "formater", lambda line, source, level, timestamp: f"{source} | {line}")
    monkeypatch.setattr(option, "logit", {})
    monkeypatch.setattr(option, "enabled", {**option.enabled, "processes": True})
    option._set_level("INFO")
    recorder.levels_from = option._set_level
    return recorder


def _announce_through_exabgp(commands, tuned):
    """Each command through ExaBGP's own ``announce route`` handler; returns the routes it accepted."""
    scheduled, accepted = [], []
    reactor = SimpleNamespace(
        peers=lambda service: ["neighbor 10.0.0.2 local-ip 10.0.0.1"],
        asynchronous=SimpleNamespace(schedule=lambda service, line, callback: scheduled.append(callback)),
        processes=SimpleNamespace(answer_done=lambda service: None, answer_error=lambda service: None),
        configuration=SimpleNamespace(inject_change=lambda peers, change: accepted.append(change)),
    )
    api = API(reactor)
    if tuned:  # on the instance: the class stays as shipped for the rest of this process
        api.log_message = types.MethodType(tuning._replace_log_message(API.log_message), api)
        api.log_failure = types.MethodType(tuning._failure_level(API.log_failure), api)
    for command in commands:
        Command.callback["text"]["announce route"](api, reactor, "calico-bgp", command, False)
        for _ in scheduled.pop():
            pass
    return [str(change.nlri.cidr) for change in accepted]


GOOD, NO_NEXT_HOP = "announce route 10.1.0.0/26 next-hop 10.0.0.1", "announce route 10.2.0.0/26"


def test_a_refused_route_reaches_exabgps_log_and_an_accepted_one_stays_at_debug(exabgp_logging):
    assert _announce_through_exabgp([GOOD, NO_NEXT_HOP], tuned=True) == ["10.1.0.0/26"]
    assert exabgp_logging.lines == [
        ("ERROR", f"processes | command could not parse route in : {NO_NEXT_HOP}"),
        ("ERROR", "processes | reason: invalid route (missing next-hop, label or rd ?)"),
    ]


def test_upstream_writes_every_accepted_route_at_info_and_no_line_for_a_refused_one(exabgp_logging):
    """The two upstream behaviours the patches change (if this starts failing, upstream fixed them)."""
    assert _announce_through_exabgp([GOOD, NO_NEXT_HOP], tuned=False) == ["10.1.0.0/26"]
    assert [level for level, _ in exabgp_logging.lines] == ["INFO"]
    assert "route added" in exabgp_logging.lines[0][1]


@pytest.mark.parametrize(
    ("message", "level"),
    [
        ("route added to all peers : 10.1.0.0/26 next-hop 10.0.0.1", "DEBUG"),
        ("route removed from all peers : 10.1.0.0/26 next-hop 10.0.0.1", "DEBUG"),
        ("flushing adjb-rib out for all peers", "DEBUG"),
        ("invalid route for all peers : 10.2.0.0/26", "WARNING"),
    ],
)
def test_api_lines_are_debug_except_invalid_routes(exabgp_logging, message, level):
    exabgp_logging.levels_from("DEBUG")
    tuning._log_command_debug(None, message)
    assert exabgp_logging.lines == [(level, f"processes | {message}")]


def test_a_patch_that_no_longer_fits_is_refused_and_leaves_upstream_alone():
    import types

    class Target:
        LIMIT = 1

        def method(self, sleeptime):
            return "upstream"

    module = types.ModuleType("fake_exabgp_module")
    module.Target = Target
    sys.modules[module.__name__] = module
    try:
        wrap = lambda original: lambda self, sleeptime: "ours"  # noqa: E731
        with pytest.raises(AttributeError, match="no longer takes 'timeout'"):
            tuning._patch(module.__name__, "Target", "method", "timeout", (), wrap)
        with pytest.raises(AttributeError, match="has no _notify_error"):
            tuning._patch(module.__name__, "Target", "method", "sleeptime", ("_notify_error",), wrap)
        assert Target().method(0) == "upstream"
        tuning._patch(module.__name__, "Target", "method", "sleeptime", ("LIMIT",), wrap)
        assert Target().method(0) == "ours"
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
@pytest.mark.parametrize("message", [lambda: "parsed 10.1.0.0/26", "not callable"])
def test_debug_gate_writes_what_upstream_writes(exabgp_logging, level, message):
    exabgp_logging.levels_from(level)
    upstream = exabgp_log.debug  # bound to ExaBGP's log class, as the patch receives it
    upstream(message, "processes")
    written, exabgp_logging.lines[:] = list(exabgp_logging.lines), []
    gated = tuning._debug_gate(upstream).__get__(None, exabgp_log)
    gated(message, "processes")
    assert exabgp_logging.lines == written
    assert bool(written) is (level == "DEBUG" or not callable(message))


def test_debug_gate_does_not_call_a_message_below_the_level(exabgp_logging):
    called = []
    gated = tuning._debug_gate(exabgp_log.debug).__get__(None, exabgp_log)
    gated(lambda: called.append(1) or "x", "processes")
    assert called == []


def _families():
    from exabgp.protocol.family import SAFI

    return [(afi, safi) for afi in [*AFI.cache, 99] for safi in [*SAFI.cache, 250]]


def test_family_index_is_upstreams_and_kept_only_for_a_bounded_number_of_families():
    from exabgp.protocol.family import Family

    index = tuning._family_index_cache(Family.index)
    families = _families()
    assert len(families) > tuning.FAMILY_INDEXES  # more than it keeps: those past the bound are computed
    for _ in range(2):  # the second time from what it kept
        for afi, safi in families:
            family = Family(afi, safi)
            assert index(family) == Family.index(family)
    closure = dict(zip(index.__code__.co_freevars, (c.cell_contents for c in index.__closure__), strict=True))
    assert len(closure["known"]) == tuning.FAMILY_INDEXES


@pytest.mark.parametrize("name", ["AFI", "SAFI"])
def test_cached_create_answers_as_upstream(name):
    import exabgp.protocol.family as family

    cls = getattr(family, name)
    create = tuning._cached_create(cls.create).__get__(None, cls)
    for value in [*cls.cache, 0, 99, 250]:
        ours, upstream = create(value), cls.create(value)
        assert type(ours) is type(upstream) and ours == upstream and str(ours) == str(upstream)
        if value in cls.cache:
            assert ours is upstream
