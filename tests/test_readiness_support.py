"""Shared pieces of the readiness tests (no tests here).

``SyntheticSource`` is a real MeasurementSource whose latencies are drawn from chosen
distributions and recorded into real HDR histograms; nothing about the outcome is fixed in
advance: the gates decide from what was drawn.  ``FakeClock`` is the injectable clock.
"""
import os
import textwrap
from dataclasses import dataclass

import numpy as np

from loadgate.controller.readiness_protocol import (
    Capacity, TargetWindow, TelemetrySample, WindowMeasurement)
from loadgate.native._hdr import Histogram


class FakeClock:
    def __init__(self, start=1_766_000_000.0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@dataclass
class Profile:
    """Lognormal latency (median in µs, sigma); ``slowdown`` multiplies every latency once
    the target receives at least ``slow_above_rps`` requests/s (a regression under load)."""

    median_us: float = 20_000.0
    sigma: float = 0.4
    error_rate: float = 0.001
    slowdown: float = 1.0
    slow_above_rps: float = 0.0


class SyntheticSource:
    def __init__(self, clock, profiles, seed=1, cores=8, memory=32 * 2**30, cpu_percent=35.0,
                 rtt_median_us=300.0):
        self.clock = clock
        self.profiles = profiles
        self.rng = np.random.default_rng(seed)
        self.cores, self.memory = cores, memory
        self.cpu_percent = cpu_percent
        self.rtt_median_us = rtt_median_us
        self.windows = []
        self.stopped = False
        self.weights, self.rate = {}, 0.0

    def describe(self):
        return Capacity(self.cores, self.memory, (), 1, "no NVML on this machine")

    def measure_rtt(self):
        result = {}
        for name in self.profiles:
            hist = Histogram()
            hist.record_array(np.maximum(1, self.rng.lognormal(
                np.log(self.rtt_median_us), 0.3, 200)).astype(np.int64))
            result[name] = hist
        return result

    def start_window(self, weights, rate):
        self.weights, self.rate = dict(weights), rate
        self.windows.append((self.clock(), dict(weights), rate))
        self.start = self.last = self.clock()
        self.hists = {name: Histogram() for name in weights}
        self.counts = {name: [0, 0] for name in weights}
        self.telemetry = []
        self.stopped = False

    def collect(self):
        now = self.clock()
        elapsed = now - self.last
        for name, share in self.weights.items():
            rps = self.rate * share
            if rps <= 0 or elapsed <= 0:
                continue
            profile = self.profiles[name]
            n = int(self.rng.poisson(rps * elapsed))
            factor = profile.slowdown if rps >= profile.slow_above_rps else 1.0
            values = self.rng.lognormal(np.log(profile.median_us * factor), profile.sigma, n)
            self.hists[name].record_array(np.maximum(1, values).astype(np.int64))
            self.counts[name][0] += n
            self.counts[name][1] += int(self.rng.binomial(n, profile.error_rate))
        if elapsed > 0:
            self.telemetry.append(TelemetrySample(now, cpu=self.cpu_percent))
        self.last = now
        duration = max(now - self.start, 1e-9)
        targets = {name: TargetWindow(name, self.hists[name].copy(), self.counts[name][0],
                                      self.counts[name][1], self.rate * share,
                                      self.counts[name][0] / duration)
                   for name, share in self.weights.items()}
        return WindowMeasurement(self.start, now, targets, tuple(self.telemetry))

    def stop(self):
        self.stopped = True


def canary_plan(tmp_path, risk="MEDIUM", environment="STAGING", extra="", rate=1000,
                name="plan.yaml", hold="60s", duration="30s"):
    """A canary plan with a rollback hook that really runs and leaves a trace in tmp_path."""
    marker = os.path.join(tmp_path, "rollback-called")
    text = textwrap.dedent(f"""\
        apiVersion: loadgate/v1
        deployment:
          id: DEPLOY-TEST-1
          type: FEATURE
          risk: {risk}
          environment: {environment}
          strategy: CANARY
          requested_by: tests
        targets:
          - name: baseline
            url: http://127.0.0.1:18081
            role: baseline
          - name: canary
            url: http://127.0.0.1:18082
            role: canary
            weight: 0
        load:
          rate: {rate}
          duration: {duration}
        canary:
          hold: {hold}
        hooks:
          rollback:
            command: [sh, -c, 'echo "$LOADGATE_WEIGHT" >> {marker}']
        rollback:
          procedure: route everything to the baseline
        """) + textwrap.dedent(extra)
    path = os.path.join(tmp_path, name)
    with open(path, "w") as handle:
        handle.write(text)
    return path
