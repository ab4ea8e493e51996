"""How a request ended.  Every scheduled request gets exactly one outcome, so the counters of
a run always add up to what the schedule asked for (no silent drop).

The integer values index the engine's per-target counter arrays (``_engine.pxd`` declares
the same numbers for the hot path); they are part of the wire format and never renumbered.
"""
import enum


class Outcome(enum.IntEnum):
    OK_2XX = 0
    REDIRECT_3XX = 1
    CLIENT_4XX = 2
    SERVER_5XX = 3
    CONNECT_ERROR = 4     # no connection could be opened to send it on
    TIMEOUT = 5           # no answer within the timeout, or still outstanding when stopped
    RESET = 6             # the connection closed or reset before the response was complete
    PARSE_ERROR = 7       # the response was not valid HTTP/1.1
    NOT_SENT = 8          # scheduled but never sent (run stopped, or given up in the queue)

    @property
    def label(self):
        """The short name used in reports and JSON (``2xx``, ``connect_error`` ...)."""
        return _LABELS[self]

    @property
    def is_response(self):
        """True for outcomes that carry an HTTP status (the request completed)."""
        return self <= Outcome.SERVER_5XX


_LABELS = {
    Outcome.OK_2XX: "2xx",
    Outcome.REDIRECT_3XX: "3xx",
    Outcome.CLIENT_4XX: "4xx",
    Outcome.SERVER_5XX: "5xx",
    Outcome.CONNECT_ERROR: "connect_error",
    Outcome.TIMEOUT: "timeout",
    Outcome.RESET: "reset",
    Outcome.PARSE_ERROR: "parse_error",
    Outcome.NOT_SENT: "not_sent",
}

# Statuses below 200 (1xx) never complete a response, and anything from 600 up is not HTTP.
ERRORS = (Outcome.CLIENT_4XX, Outcome.SERVER_5XX, Outcome.CONNECT_ERROR, Outcome.RESET,
          Outcome.PARSE_ERROR)


def outcome_for_status(status):
    """The outcome class of a final HTTP status code (200..599); PARSE_ERROR for others."""
    if 200 <= status < 600:
        return Outcome(status // 100 - 2)
    return Outcome.PARSE_ERROR
