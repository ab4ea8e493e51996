"""Live progress of a distributed run in the terminal (rich), one refresh per interval."""
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgate.controller.merge import Metric
from loadgate.controller.runner_session import AgentState


class RunProgress:
    """Listens to a DistributedRun's intervals and redraws a table of the latest one."""

    def __init__(self, run, console=None):
        self.run = run
        self.console = console or Console(stderr=True)
        self.completed = 0
        self.errors = 0
        self.last = None
        self.intervals = 0
        self._live = Live(console=self.console, refresh_per_second=4, transient=False,
                          auto_refresh=False)

    def __enter__(self):
        self._live.start()
        self.run.add_listener(self.on_interval)
        return self

    def __exit__(self, *exc):
        self._live.update(self.render(), refresh=True)
        self._live.stop()

    def on_interval(self, merged):
        self.completed += merged.completed
        self.errors += merged.errors
        self.intervals += not merged.correction
        # The agents' closing intervals (outstanding requests draining) are mostly empty; the
        # table keeps the last one that carried traffic.
        if not merged.correction and (merged.sent or merged.completed or self.last is None):
            self.last = merged
        self._live.update(self.render(), refresh=True)

    def render(self):
        run = self.run
        total_intervals = max(1, round(run.definition.duration_s / run.definition.interval_s))
        states = [s.state for s in run.sessions]
        header = Text.assemble(
            (f"{run.run_id} ", "bold"), f"{run.status.value}  ",
            f"interval {self.intervals} of {total_intervals} planned  ",
            f"completed {self.completed}  errors {self.errors}  ",
            f"agents {states.count(AgentState.RUNNING) + states.count(AgentState.FINISHED)}"
            f"/{len(states)}",
            (f"  lost {states.count(AgentState.LOST)}", "red") if AgentState.LOST in states else "")
        table = Table(box=None, pad_edge=False)
        for column in ("target", "sent/s", "done/s", "errors", "p50 ms", "p99 ms", "max ms",
                       "lag p99 ms"):
            table.add_column(column, justify="left" if column == "target" else "right")
        if self.last is not None:
            seconds = max(1e-9, (self.last.end_ns - self.last.start_ns) / 1e9)
            for name, totals in self.last.targets.items():
                latency = totals.histograms[Metric.LATENCY]
                lag = totals.histograms[Metric.SCHEDULE_LAG]
                p50, p99 = latency.percentiles([50.0, 99.0]) if latency.total_count else ("-", "-")
                table.add_row(
                    name, f"{totals.sent / seconds:.0f}", f"{totals.completed / seconds:.0f}",
                    str(totals.errors), _ms(p50), _ms(p99),
                    _ms(latency.max if latency.total_count else "-"),
                    _ms(lag.value_at_percentile(99.0) if lag.total_count else "-"))
            if self.last.missing:
                table.caption = f"missing from this interval: {', '.join(self.last.missing)}"
        return Group(header, table)


def _ms(value_us):
    return value_us if isinstance(value_us, str) else f"{value_us / 1000:.2f}"
