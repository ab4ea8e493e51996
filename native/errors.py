"""The one exception hierarchy of loadgate.

Every layer raises a subclass of :class:`LoadgateError`; native error codes are translated
into these in one place (``loadgate.native._hdr`` and the engine), never ad hoc.  On the load
path errors are data (outcome counters), not exceptions: these are for misuse and bad input.
"""


class LoadgateError(Exception):
    """Base of every error loadgate raises on purpose."""

    exit_code = 1


class ConfigError(LoadgateError):
    """A value given by the user (flag, plan, spec) is invalid."""

    exit_code = 3


class HistogramError(LoadgateError):
    """A histogram operation could not be carried out (ranges, layout, memory)."""


class EncodingError(HistogramError):
    """An encoded histogram or interval log could not be decoded."""


class EngineError(LoadgateError):
    """The load engine could not start or continue (bad target, no sockets)."""


class InfrastructureError(LoadgateError):
    """Agents, run directories or networks are not usable for a run."""

    exit_code = 4
