"""Running the plan's hooks (traffic shift, switch, verify, instance step, rollback).

Hooks run on the controller only, from the plan the controller loaded itself, never from a
remote request.  A command hook gets the canary weight as ``{weight}`` in its arguments and as
LOADGATE_WEIGHT (plus LOADGATE_HOOK, LOADGATE_DEPLOYMENT_ID and any extra values, such as
the rolling batch, as LOADGATE_<NAME> and ``{name}`` in the arguments); a webhook gets the
same values as a JSON POST.  A hook succeeds when the command exits 0 or the webhook answers
2xx within the hook's timeout.
"""
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

OUTPUT_TAIL = 2000


@dataclass(frozen=True)
class HookResult:
    hook: str
    ok: bool
    status: int
    output: str
    seconds: float

    def to_dict(self):
        return {"hook": self.hook, "ok": self.ok, "status": self.status,
                "output": self.output, "seconds": round(self.seconds, 3)}


class HookRunner:
    """Runs hooks for one deployment; ``values`` become the hook's environment/payload.

    ``allowed=False`` is for a plan that did not come from this machine (submitted over gRPC):
    every configured hook then fails without running, so a deployment that needs one stops
    in AVARIYA instead of executing a remote party's command here.
    """

    def __init__(self, deployment_id, cwd=None, allowed=True):
        self.deployment_id = deployment_id
        self.cwd = cwd
        self.allowed = allowed

    def run(self, name, hook, **values):
        """The HookResult of running hook (None: nothing to run, reported as ok)."""
        if hook is None:
            return HookResult(name, True, 0, "no hook configured", 0.0)
        if not self.allowed:
            return HookResult(name, False, -1, "hooks are disabled: the plan came from a remote "
                              "request, and hooks run only from a local plan", 0.0)
        values = {"hook": name, "deployment_id": self.deployment_id, **values}
        started = time.monotonic()
        if hook.command:
            return self._command(name, hook, values, started)
        return self._webhook(name, hook, values, started)

    def _command(self, name, hook, values, started):
        argv = []
        for part in hook.command:
            for key, value in values.items():
                part = part.replace("{" + key + "}", _text(value))
            argv.append(part)
        env = dict(os.environ)
        env.update({"LOADGATE_" + key.upper(): _text(value) for key, value in values.items()})
        try:
            done = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True,
                                  timeout=hook.timeout_s, check=False)
        except FileNotFoundError as exc:
            return HookResult(name, False, 127, str(exc), time.monotonic() - started)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"") + (exc.stderr or b"")
            return HookResult(name, False, -1, f"timed out after {hook.timeout_s:g}s: "
                              + output.decode(errors="replace")[-OUTPUT_TAIL:],
                              time.monotonic() - started)
        output = (done.stdout + done.stderr).decode(errors="replace")[-OUTPUT_TAIL:]
        return HookResult(name, done.returncode == 0, done.returncode, output,
                          time.monotonic() - started)

    def _webhook(self, name, hook, values, started):
        request = urllib.request.Request(
            hook.webhook, data=json.dumps(values).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout_s) as response:
                body = response.read(OUTPUT_TAIL).decode(errors="replace")
                return HookResult(name, 200 <= response.status < 300, response.status, body,
                                  time.monotonic() - started)
        except urllib.error.HTTPError as exc:
            return HookResult(name, False, exc.code, str(exc), time.monotonic() - started)
        except (urllib.error.URLError, OSError) as exc:
            return HookResult(name, False, -1, str(exc), time.monotonic() - started)


def _text(value):
    if isinstance(value, float):
        return format(value, "g")
    return str(value)
