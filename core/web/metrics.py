"""Prometheus metrics in the text exposition format (0.0.4), with no extra dependency.

Names follow vLLM's (`vllm:spec_decode_num_accepted_tokens_total` becomes
`specguard:spec_decode_num_accepted_tokens_total`). Every metric is process-local: a restart
starts from zero, as Prometheus counters expect.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
RECEIPT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels.get(n, "")) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing value per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            key = self._key(labels)
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    """A value that goes up and down."""

    kind = "gauge"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            key = self._key(labels)
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)


class Histogram(_Metric):
    """Cumulative buckets, a sum and a count per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float], labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        with self._lock:
            counts, total = self._data.setdefault(self._key(labels), ([0] * len(self.buckets), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        data = self._data.get(self._key(labels))
        return data[0][-1] if data else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        lines = self.header()
        for key, (counts, total) in items:
            for bound, count in zip(self.buckets, counts, strict=True):
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {count}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return lines


class ServerMetrics:
    """The metrics one serving node exports at GET /metrics."""

    def __init__(self) -> None:
        p = "specguard:"
        self.request_success = Counter(p + "request_success_total", "Finished requests by finish reason.",
                                       ["finish_reason"])
        self.requests_rejected = Counter(p + "requests_rejected_total", "Requests answered with an error, by reason.",
                                         ["reason"])
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens processed.")
        self.generation_tokens = Counter(p + "generation_tokens_total", "Tokens generated.")
        self.num_drafts = Counter(p + "spec_decode_num_drafts_total", "Verification steps that had a draft.",
                                  ["drafter"])
        self.num_draft_tokens = Counter(p + "spec_decode_num_draft_tokens_total", "Draft tokens proposed.",
                                        ["drafter"])
        self.num_accepted_tokens = Counter(p + "spec_decode_num_accepted_tokens_total",
                                           "Draft tokens the target accepted.", ["drafter"])
        self.num_rejected_proposals = Counter(p + "spec_decode_num_rejected_proposals_total",
                                              "Malformed or failed proposals dropped whole.", ["drafter"])
        self.verification_steps = Counter(p + "spec_decode_num_verification_steps_total",
                                          "Target forward passes (verification steps).", ["drafter"])
        self.receipts = Counter(p + "receipts_issued_total", "Receipts signed and appended to the log.")
        self.running = Gauge(p + "num_requests_running", "Requests holding a generation slot.")
        self.waiting = Gauge(p + "num_requests_waiting", "Requests waiting for a generation slot.")
        self.e2e_latency = Histogram(p + "e2e_request_latency_seconds", "Request latency, admission to last byte.",
                                     LATENCY_BUCKETS)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time to the first generated token.",
                              LATENCY_BUCKETS)
        self.receipt_seconds = Histogram(p + "receipt_seconds", "Time spent sealing, signing and logging a receipt.",
                                         RECEIPT_BUCKETS)
        self._all = [self.request_success, self.requests_rejected, self.prompt_tokens, self.generation_tokens,
                     self.num_drafts, self.num_draft_tokens, self.num_accepted_tokens, self.num_rejected_proposals,
                     self.verification_steps, self.receipts, self.running, self.waiting, self.e2e_latency,
                     self.ttft, self.receipt_seconds]

    def observe_transcript(self, transcript: object) -> None:
        """Count tokens and drafter statistics of one finished transcript."""
        steps = getattr(transcript, "steps", [])
        self.prompt_tokens.inc(len(getattr(transcript, "prompt_ids", [])))
        self.generation_tokens.inc(len(getattr(transcript, "output_ids", [])))
        for step in steps:
            name = step.drafter
            self.verification_steps.inc(drafter=name)
            if step.drafted:
                self.num_drafts.inc(drafter=name)
                self.num_draft_tokens.inc(len(step.drafted), drafter=name)
                self.num_accepted_tokens.inc(step.accepted, drafter=name)
            if step.rejected_proposal:
                self.num_rejected_proposals.inc(drafter=name)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
