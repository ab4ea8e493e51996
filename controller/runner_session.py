"""The controller's record of each agent in a run, and the states a run and an agent go
through."""
import enum
from dataclasses import dataclass, field


class RunStatus(enum.Enum):
    """Where a distributed run stands; the last four are final."""

    PREPARING = "preparing"
    PREPARED = "prepared"
    RUNNING = "running"
    FINISHING = "finishing"
    COMPLETED = "completed"  # the schedule ran to its end (agents may have been lost)
    STOPPED = "stopped"      # stopped early on request
    ABORTED = "aborted"      # stopped because an agent was lost under policy abort
    FAILED = "failed"        # no agent finished its shard


class AgentState(enum.Enum):
    """One agent's part in the run."""

    CONNECTING = "connecting"
    PREPARED = "prepared"
    RUNNING = "running"        # expected to report
    FINISHED = "finished"      # its final report is merged
    LOST = "lost"              # stopped answering; comes back to RUNNING if it answers again
    FAULTY = "faulty"          # answered, but its reports kept being rejected
    UNFINISHED = "unfinished"  # still answering at the end but never sent its final report


@dataclass(eq=False)
class AgentSession:
    """An agent of the run: its shard, its stream, its health as the controller saw it."""

    index: int  # its shard index
    address: str
    client: object  # AgentClient
    state: AgentState = AgentState.CONNECTING
    stream: object = None  # runner_reports.AgentStream once prepared
    shard_requests: int = 0
    workers: int = 0
    rate_scale: float = 1.0
    generating: bool = False
    last_answer: float = 0.0  # time.monotonic() of the last answered Ping
    last_sample: object = None  # ClockSample of the last Ping
    last_error: str = ""
    lost_at_ns: int = 0
    lost_reason: str = ""
    times_lost: int = 0
    consecutive_rejections: int = 0
    stream_failures: int = 0
    notes: list = field(default_factory=list)

    @property
    def agent_id(self):
        return self.client.agent_id
