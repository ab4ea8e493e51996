"""``loadgate watch ADDR [RUN]``: a live terminal dashboard of a run, fed by WatchRun.

It is the reference consumer of the stream: ``WatchState.apply(event)`` takes each RunEvent
(the snapshot first, then transitions and merged intervals) and ``render(state)`` draws the
stage states with their markers, the canary weight, the rate, latency percentiles per
target over the recent intervals (a table and a p99 sparkline), errors, the generator's
health (each agent's row named by the id it reports), GPU utilisation and memory, and the
latest transitions; a plain load run (no stages) shows how it ended instead of a verdict.
``watch(...)`` connects, follows until the run finishes (or ``max_events``), and draws on a
rich Console: live on a terminal, once at the end otherwise (``--once`` draws the current
state and exits).
"""
import collections
import datetime

import grpc
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from loadgate.controller.service_client import ControllerClient, translate
from loadgate.controller.states import State
from loadgate.proto.loadgate.v1 import common_pb2, controller_pb2

SPARK = "▁▂▃▄▅▆▇█"
NS = 1_000_000_000
_ERROR_OUTCOMES = {common_pb2.OUTCOME_OK_2XX, common_pb2.OUTCOME_REDIRECT_3XX,
                   common_pb2.OUTCOME_NOT_SENT}


def register(subparsers):
    parser = subparsers.add_parser("watch", help="live dashboard of a run (WatchRun)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("address", metavar="ADDR", help="the controller, HOST:PORT")
    parser.add_argument("run", metavar="RUN", nargs="?", default="",
                        help="run id (default: the newest run)")
    parser.add_argument("--history", type=int, default=12, help="intervals shown (default 12)")
    parser.add_argument("--once", action="store_true", help="draw the current state and exit")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--token-file", help="bearer token the controller requires")
    group.add_argument("--tls-dir", help="`loadgate certs init` directory: mutual TLS")
    parser.set_defaults(func=watch_command)


def watch_command(args):
    state = watch(args.address, args.run, Console(), history=args.history,
                  token_file=args.token_file, tls_dir=args.tls_dir,
                  max_events=1 if args.once else None)
    return 0 if state.finished or args.once else 4


class TargetSeries:
    """One target's recent intervals: (index, count, rate, p50, p90, p99, max, errors)."""

    def __init__(self, history):
        self.rows = collections.deque(maxlen=history)
        self.weight = 0.0
        self.requests = 0
        self.errors = 0


class WatchState:
    """What the dashboard knows, built only from RunEvents."""

    def __init__(self, history=12):
        self.history = history
        self.info = None
        self.stages = {}  # stage title -> [parent title, marker, since ns]
        self.transitions = collections.deque(maxlen=8)
        self.targets = {}
        self.intervals = collections.deque(maxlen=history)  # (index, phase, intended, achieved)
        self.gpus = []
        self.gpu_unavailable = ""
        self.generator = None
        self.agents = ()  # GeneratorHealth of each agent, in agent order, named by agent_id
        self.saturated = ()
        self.skipped = 0
        self.finished = False

    def apply(self, event):
        self.skipped = max(self.skipped, event.skipped)
        kind = event.WhichOneof("event")
        if kind in ("snapshot", "finished"):
            self._take_info(getattr(event, kind))
            self.finished = self.finished or kind == "finished"
        elif kind == "transition":
            t = event.transition
            entry = self.stages.setdefault(t.stage, ["", t.to_state, t.unix_ns])
            entry[1], entry[2] = t.to_state, t.unix_ns
            self.transitions.append(t)
        elif kind == "interval":
            self._take_interval(event.interval)

    def _take_info(self, info):
        self.info = info
        self.stages = {s.stage: [s.parent, s.state, s.since_unix_ns] for s in info.stages}

    def _take_interval(self, interval):
        if interval.correction:
            return
        self.intervals.append((interval.interval_index, interval.phase, interval.intended_rate,
                               interval.achieved_rate))
        for target in interval.targets:
            series = self.targets.setdefault(target.name, TargetSeries(self.history))
            errors = sum(o.count for o in target.outcomes if o.outcome not in _ERROR_OUTCOMES)
            series.rows.append((interval.interval_index, target.count, target.rate,
                                target.p50_us, target.p90_us, target.p99_us, target.max_us,
                                errors))
            series.weight = target.weight
            series.requests += target.count
            series.errors += errors
        self.generator = interval.generator
        self.agents = tuple(interval.agents)
        self.saturated = tuple(interval.saturated_agents)
        if interval.telemetry:
            self.gpus = [(agent, gpu) for agent, sample in enumerate(interval.telemetry)
                         for gpu in sample.gpus]
            reasons = [s.gpu_unavailable_reason for s in interval.telemetry
                       if s.gpu_unavailable_reason]
            self.gpu_unavailable = reasons[0] if reasons else ""


def sparkline(values):
    """One block character per value, scaled between the smallest and largest."""
    values = [v for v in values if v > 0]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))]
                   for v in values)


def _ms(us):
    return f"{us / 1000:.2f}" if us else "-"


def _style(marker):
    state = State(marker)
    if state.perfective:
        return "green"
    if state.imperfective:
        return "yellow"
    return "dim" if state is State.OZHIDAET else "bold red"


def _when(unix_ns):
    return datetime.datetime.fromtimestamp(unix_ns / NS).strftime("%H:%M:%S") if unix_ns else ""


def render(state):
    """The dashboard for ``state`` as one rich renderable."""
    return Group(_header(state), _stages(state), _targets(state), _recent(state),
                 _hardware(state), _transitions(state))


def _header(state):
    info = state.info
    if info is None:
        return Panel("waiting for the run's state ...")
    text = Text()
    text.append(f"{info.deployment_id}", style="bold")
    text.append(f"  run {info.run_id}\n")
    # The last interval of a load phase is often partial or empty: show the last with load.
    loaded = [i for i in state.intervals if i[3] > 0] or list(state.intervals)
    _, phase, intended, rate = loaded[-1] if loaded else (0, "", 0.0, 0.0)
    text.append(f"phase {phase or '-'}   canary weight {info.canary_weight:g}%   "
                f"rate {rate:.1f}/s of {intended:.1f}/s intended")
    if info.waiting_for_approval:
        text.append("\nWAITING FOR APPROVAL (loadgate approve ... --who --reason)",
                    style="bold magenta")
    if info.run_end:
        # A plain load run: no verdict, only how its load ended.
        ended = common_pb2.RunEnd.Name(info.run_end).removeprefix("RUN_END_").lower()
        text.append(f"\nload run {ended}", style="bold")
    elif state.finished or info.verdict:
        text.append(f"\nverdict {info.verdict or '-'}", style="bold")
    if state.skipped:
        text.append(f"\nskipped {state.skipped} events (this terminal read too slowly)",
                    style="yellow")
    return Panel(text, title="loadgate watch", box=box.ROUNDED)


def _stages(state):
    table = Table(title="Stages", box=box.SIMPLE_HEAD, expand=False)
    table.add_column("stage")
    table.add_column("state")
    table.add_column("since")
    for stage, (parent, marker, since) in state.stages.items():
        table.add_row(("  " if parent else "") + stage,
                      Text(f"[{marker}]", style=_style(marker)), _when(since))
    return table


def _targets(state):
    table = Table(title="Latency per target (ms, latest interval with responses), p99 trend",
                  box=box.SIMPLE_HEAD)
    for column in ("target", "weight %", "rate/s", "p50", "p90", "p99", "max", "errors",
                   "p99 trend"):
        table.add_column(column, justify="left" if column in ("target", "p99 trend")
                         else "right")
    for name, series in state.targets.items():
        rows = [row for row in series.rows if row[1]]
        if not rows:
            continue
        _, _, rate, p50, p90, p99, top, _ = rows[-1]
        error_share = 100.0 * series.errors / series.requests if series.requests else 0.0
        table.add_row(name, f"{series.weight:g}", f"{rate:.1f}", _ms(p50), _ms(p90), _ms(p99),
                      _ms(top), f"{series.errors} ({error_share:.2f}%)",
                      sparkline([row[5] for row in series.rows]))
    return table


def _recent(state):
    table = Table(title="Recent intervals (p99 ms per target)", box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("phase")
    table.add_column("achieved/s", justify="right")
    names = list(state.targets)
    for name in names:
        table.add_column(name, justify="right")
    by_index = {name: {row[0]: row for row in state.targets[name].rows} for name in names}
    for index, phase, _, achieved in state.intervals:
        cells = [_ms(by_index[n][index][5]) if index in by_index[n] else "-" for n in names]
        table.add_row(str(index), phase, f"{achieved:.1f}", *cells)
    return table


def _hardware(state):
    table = Table(title="Generator and GPUs", box=box.SIMPLE_HEAD)
    table.add_column("what")
    table.add_column("figures")
    if state.generator is not None:
        g = state.generator
        table.add_row("generator", f"cpu {g.cpu_seconds:.2f} s  max lag {g.max_lag_us / 1000:.1f} "
                      f"ms  connections {g.open_connections}"
                      + (f"  SATURATED: {', '.join(state.saturated)}" if g.saturated else ""))
    for agent, health in enumerate(state.agents):
        name = f"agent {agent} {health.agent_id}" if health.agent_id else f"agent {agent}"
        table.add_row(name, f"cpu {health.cpu_percent:.0f}% of {health.workers} "
                      f"worker(s)  max lag {health.max_lag_us / 1000:.1f} ms  connections "
                      f"{health.open_connections}" + ("  SATURATED" if health.saturated else ""))
    for agent, gpu in state.gpus:
        used = gpu.memory_used_bytes / 2**30
        total = gpu.memory_total_bytes / 2**30
        table.add_row(f"agent {agent} GPU {gpu.index} {gpu.name}",
                      f"util {gpu.utilization_percent:.0f}%  memory {used:.1f}/{total:.1f} GiB")
    if not state.gpus:
        table.add_row("GPU", f"none ({state.gpu_unavailable})" if state.gpu_unavailable
                      else "no samples yet")
    return table


def _transitions(state):
    table = Table(title="Latest transitions", box=box.SIMPLE_HEAD)
    for column in ("time", "stage", "from", "to", "reason"):
        table.add_column(column)
    for t in state.transitions:
        table.add_row(_when(t.unix_ns), t.stage, f"[{t.from_state}]",
                      Text(f"[{t.to_state}]", style=_style(t.to_state)), t.reason[:60])
    return table


def watch(address, run_id, console, *, history=12, token_file=None, tls_dir=None,
          max_events=None, live=None):
    """Follows run_id (empty: the newest) at address, drawing on console; returns the
    WatchState once the run finished or ``max_events`` events were read."""
    state = WatchState(history)
    live = console.is_terminal if live is None else live
    with ControllerClient(address, token_file, tls_dir) as client:
        stream = client.stub.WatchRun(controller_pb2.WatchRunRequest(run_id=run_id),
                                      metadata=client.metadata)
        try:
            if live:
                with Live(render(state), console=console, refresh_per_second=4) as screen:
                    for event in _events(stream, max_events):
                        state.apply(event)
                        screen.update(render(state))
            else:
                for event in _events(stream, max_events):
                    state.apply(event)
                console.print(render(state))
        except grpc.RpcError as exc:
            raise translate(exc, address) from None
        finally:
            stream.cancel()
    return state


def _events(stream, max_events):
    for count, event in enumerate(stream, 1):
        yield event
        if max_events is not None and count >= max_events:
            return
