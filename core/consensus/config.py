"""Consensus settings: the policy's [consensus] table (read and type-checked here and nowhere else),
a serving node's settings (command line over policy: who to ask, how many must accept, which
keys count, what to do without quorum), a verifier's settings (tolerances, allowed serving
nodes, per-client rate limit), and the layer's errors."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError, SpecguardError, VerificationError
from ..key_args import parse_key_arg

if TYPE_CHECKING:
    from ..context import NodeContext

ON_NO_QUORUM = ("flag", "withhold", "fail")


MAX_BODY_BYTES = 8 * 1024 * 1024


PIN_FILE = Path("consensus") / "pinned_verifier_keys.json"


#: Environment variable of a standalone verifier: comma-separated serving-node keys (hex or files) it accepts.
ALLOWED_NODES_ENV = "SPECGUARD_VERIFIER_ALLOWED_NODES"


class NoQuorumError(SpecguardError):
    """Consensus policy "fail": the response got no quorum certificate (HTTP 503)."""

    http_status = 503


class UnknownEngineError(VerificationError):
    """A transcript names an engine this verifier has no calibrated tolerance for: it refuses to
    vote rather than judge it with the exact margin (rejecting honest work) or a loose one (HTTP 422)."""

    http_status = 422


class ConsensusWithheldError(VerificationError):
    """Consensus policy "withhold": the response is withheld because it was not certified (HTTP 422)."""

    http_status = 422


# --- the policy table ---------------------------------------------------------------------------


def default_quorum(n: int) -> int:
    """2f + 1 for n = 3f + 1 (n - f with f = floor((n - 1) / 3))."""
    return n - (n - 1) // 3 if n > 0 else 0


#: Engines whose transcripts are the reference rule's choices on the verifier's own fp32 torch model
#: (`EngineCapabilities.rederivable`): re-checked exactly, never with a cross-engine table.
EXACT_ENGINES = ("specguard", "transformers")


@dataclass(frozen=True)
class EngineTolerance:
    """A [consensus.engines.NAME] table: how a verifier re-checks transcripts of engine NAME
    (another implementation of the same model, e.g. llama.cpp on its GGUF) against its torch model.

    - `margin`: a token that is not the verifier's choice is accepted only if its decision score
      is within `margin` of the best (logit units for greedy; divided by the temperature for
      sampled requests, whose scores are log p at that temperature plus noise);
    - `logprob_tolerance`: claimed log-probabilities may differ this much from the verifier's;
    - `max_near_tie_fraction` / `max_near_ties`: at most floor(fraction x tokens) such
      within-margin disagreements per response (and never more than `max_near_ties` when set):
      this bounds how many tokens of one response a dishonest engine may choose differently.
      The cap rounds down: a short answer gets no free swap (rounding up gave every answer one).

    A vote judged with such a table says `cross-engine:NAME` (see specguard.consensus.profiles):
    auditors do not count it unless they accept that profile explicitly.
    """

    engine: str
    margin: float
    logprob_tolerance: float
    max_near_tie_fraction: float
    max_near_ties: int | None = None

    def allowed_near_ties(self, tokens: int) -> int:
        """How many within-margin disagreements a response of `tokens` tokens may have."""
        n = math.floor(self.max_near_tie_fraction * tokens + 1e-9)
        return n if self.max_near_ties is None else min(n, self.max_near_ties)


_ENGINE_KEYS = {"margin", "logprob_tolerance", "max_near_tie_fraction", "max_near_ties"}
_ENGINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _engine_tables(value: Any) -> tuple[EngineTolerance, ...]:
    """Parse [consensus.engines]: every key required except max_near_ties; unknown keys refused."""
    if not isinstance(value, dict):
        raise ConfigError("consensus.engines must be a table of engine tables", field="consensus.engines",
                          got=type(value).__name__)
    out = []
    for name, table in sorted(value.items()):
        where = f"consensus.engines.{name}"
        if not isinstance(name, str) or not _ENGINE_NAME.fullmatch(name):
            raise ConfigError("engine name must be 1-64 letters, digits, '.', '_' or '-'", field=where, got=name)
        if name in EXACT_ENGINES:
            raise ConfigError("this engine is re-checked exactly (the top-level margin and logprob_tolerance)",
                              field=where, got=name, expected=f"an engine other than {', '.join(EXACT_ENGINES)}")
        if not isinstance(table, dict):
            raise ConfigError("must be a table", field=where, got=type(table).__name__)
        unknown = sorted(set(table) - _ENGINE_KEYS)
        missing = sorted(_ENGINE_KEYS - {"max_near_ties"} - set(table))
        if unknown or missing:
            raise ConfigError("unknown or missing key(s)", field=where, got={"unknown": unknown, "missing": missing},
                              expected=sorted(_ENGINE_KEYS))
        numbers = {k: _number(table, k, None, 0.0, 1.0, where) for k in ("margin", "logprob_tolerance",
                                                                          "max_near_tie_fraction")}
        cap = _integer(table, "max_near_ties", None, 0, where)
        out.append(EngineTolerance(engine=name, max_near_ties=cap, **numbers))  # type: ignore[arg-type]
    return tuple(out)


#: Engines a verifier can re-execute itself on the transcript's own model file (same-engine profile).
SAME_ENGINES = ("llamacpp",)
_SAME_ENGINE_KEYS = {"gguf", "margin", "logprob_tolerance", "threads"}


@dataclass(frozen=True)
class SameEngineTable:
    """A [consensus.same_engine.NAME] table: re-execute engine NAME on a model file (`gguf`; default the
    verifier's own model file when it was loaded from a GGUF). `margin` / `logprob_tolerance` default
    to the committed same-engine calibration (specguard.consensus.llamacpp_rederive)."""

    engine: str
    gguf: str | None = None
    margin: float | None = None
    logprob_tolerance: float | None = None
    threads: int = 1


def _same_engine_tables(value: Any) -> tuple[SameEngineTable, ...]:
    if not isinstance(value, dict):
        raise ConfigError("consensus.same_engine must be a table of engine tables", field="consensus.same_engine",
                          got=type(value).__name__)
    out = []
    for name, table in sorted(value.items()):
        where = f"consensus.same_engine.{name}"
        if name not in SAME_ENGINES:
            raise ConfigError("no same-engine re-execution for this engine", field=where, got=name,
                              expected=list(SAME_ENGINES))
        if not isinstance(table, dict) or set(table) - _SAME_ENGINE_KEYS:
            raise ConfigError("must be a table with keys among " + ", ".join(sorted(_SAME_ENGINE_KEYS)), field=where,
                              got=sorted(table) if isinstance(table, dict) else type(table).__name__)
        gguf = table.get("gguf")
        if gguf is not None and not isinstance(gguf, str):
            raise ConfigError("gguf must be a file path", field=f"{where}.gguf", got=gguf)
        out.append(SameEngineTable(name, gguf, _number(table, "margin", None, 0.0, 1.0, where),
                                   _number(table, "logprob_tolerance", None, 0.0, 1.0, where),
                                   int(_integer(table, "threads", 1, 1, where) or 1)))
    return tuple(out)


def _accept_profiles(value: Any) -> tuple[str, ...]:
    from .profiles import parse_accepted

    if not isinstance(value, list):
        raise ConfigError("consensus.accept_profiles must be a list of profile names",
                          field="consensus.accept_profiles", got=type(value).__name__)
    try:
        return parse_accepted(value, "consensus.accept_profiles")
    except SpecguardError as exc:
        raise ConfigError(exc.message, field=exc.field, got=exc.got, expected=exc.expected) from exc


@dataclass(frozen=True)
class ConsensusPolicy:
    """The policy's [consensus] table, typed. Unknown keys are a ConfigError (a typo must not
    silently turn a check off)."""

    verifiers: tuple[str, ...] = ()
    verifier_entry_keys: tuple[bytes, ...] = ()  # keys given inline as {url, key}
    verifier_keys: tuple[bytes, ...] = ()
    quorum: int | None = None
    on_no_quorum: str = "flag"
    trust_on_first_use: bool = False
    timeout_seconds: float = 10.0
    margin: float | None = None
    logprob_tolerance: float | None = None
    min_attested_verifiers: int = 0
    allowed_nodes: tuple[bytes, ...] | None = None  # None: any serving node (logged as open)
    rate_limit_per_second: float = 5.0
    rate_limit_burst: int = 20
    work_tokens_per_second: float = 2000.0  # per-client work budget, in model tokens re-derived
    work_burst_tokens: int = 32768
    engines: tuple[EngineTolerance, ...] = ()  # [consensus.engines.NAME]: cross-engine re-checking
    same_engine: tuple[SameEngineTable, ...] = ()  # [consensus.same_engine.NAME]: re-execute engine NAME
    accept_profiles: tuple[str, ...] = ()  # profiles counted beyond exact and same-engine (the auditor's choice)


_POLICY_KEYS = {"engines", "same_engine", "accept_profiles", "verifiers", "verifier_keys", "quorum", "on_no_quorum", "trust_on_first_use", "timeout_seconds",
                "margin", "logprob_tolerance", "min_attested_verifiers", "allowed_nodes", "rate_limit_per_second",
                "rate_limit_burst", "work_tokens_per_second", "work_burst_tokens"}


def _number(section: dict[str, Any], name: str, default: float | None, lo: float, hi: float,
            prefix: str = "consensus") -> float | None:
    value = section.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not lo <= value <= hi:
        where = f"{prefix}.{name}"
        raise ConfigError(f"{where} must be a number in [{lo:g}, {hi:g}]", field=where, got=value)
    return float(value)


def _integer(section: dict[str, Any], name: str, default: int | None, lo: int, prefix: str = "consensus") -> int | None:
    value = section.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{prefix}.{name} must be an integer >= {lo}", field=f"{prefix}.{name}", got=value)
    return value


def _key_list(value: Any, where: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise ConfigError("must be a list of keys (64 hex digits or files)", field=where, got=type(value).__name__)
    return tuple(k if isinstance(k, bytes) else key_value(k, f"{where}[{i}]") for i, k in enumerate(value))


def consensus_policy(policy: Any) -> ConsensusPolicy:
    """The typed [consensus] table of `policy` (`Policy.consensus`, parsed at load); None: all defaults."""
    return ConsensusPolicy() if policy is None else policy.consensus


def parse_consensus(section: dict[str, Any]) -> ConsensusPolicy:
    """Parse a [consensus] table (once, by `specguard.policies.Policy.consensus`)."""
    unknown = sorted(set(section) - _POLICY_KEYS)
    if unknown:
        raise ConfigError("unknown key(s) in the policy's [consensus] table", field="consensus", got=unknown,
                          expected=sorted(_POLICY_KEYS))
    urls: list[str] = []
    entry_keys: list[bytes] = []
    raw_verifiers = section.get("verifiers", [])
    if not isinstance(raw_verifiers, list):
        raise ConfigError("consensus.verifiers must be a list", field="consensus.verifiers", got=raw_verifiers)
    for i, entry in enumerate(raw_verifiers):
        url, key = _verifier_entry(entry, f"consensus.verifiers[{i}]")
        urls.append(url)
        if key is not None:
            entry_keys.append(key)
    on_no = section.get("on_no_quorum", "flag")
    if on_no not in ON_NO_QUORUM:
        raise ConfigError("unknown consensus.on_no_quorum", field="consensus.on_no_quorum", got=on_no,
                          expected=ON_NO_QUORUM)
    tofu = section.get("trust_on_first_use", False)
    if not isinstance(tofu, bool):
        raise ConfigError("consensus.trust_on_first_use must be true or false", field="consensus.trust_on_first_use",
                          got=tofu)
    allowed = section.get("allowed_nodes")
    return ConsensusPolicy(
        verifiers=tuple(urls),
        verifier_entry_keys=tuple(entry_keys),
        verifier_keys=_key_list(section.get("verifier_keys", []), "consensus.verifier_keys"),
        quorum=_integer(section, "quorum", None, 1),
        on_no_quorum=on_no,
        trust_on_first_use=tofu,
        timeout_seconds=float(_number(section, "timeout_seconds", 10.0, 0.1, 600.0) or 10.0),
        margin=_number(section, "margin", None, 0.0, 1.0),
        logprob_tolerance=_number(section, "logprob_tolerance", None, 0.0, 1.0),
        min_attested_verifiers=int(_integer(section, "min_attested_verifiers", 0, 0) or 0),
        allowed_nodes=None if allowed is None else _key_list(allowed, "consensus.allowed_nodes"),
        rate_limit_per_second=float(_number(section, "rate_limit_per_second", 5.0, 0.0, 1e6) or 0.0),
        rate_limit_burst=int(_integer(section, "rate_limit_burst", 20, 1) or 1),
        work_tokens_per_second=float(_number(section, "work_tokens_per_second", 2000.0, 0.0, 1e9) or 0.0),
        work_burst_tokens=int(_integer(section, "work_burst_tokens", 32768, 1) or 1),
        engines=_engine_tables(section.get("engines", {})),
        same_engine=_same_engine_tables(section.get("same_engine", {})),
        accept_profiles=_accept_profiles(section.get("accept_profiles", [])),
    )


def _verifier_entry(entry: Any, where: str) -> tuple[str, bytes | None]:
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, dict) and isinstance(entry.get("url"), str) and set(entry) <= {"url", "key"}:
        key = entry.get("key")
        return entry["url"], None if key is None else key_value(key, f"{where}.key")
    raise ConfigError("a verifier must be a URL or a table {url, key}", field=where, got=entry)


# --- a serving node's settings -------------------------------------------------------------------


@dataclass
class ConsensusConfig:
    """Who to ask, how many must accept, which keys count, and what to do without quorum."""

    verifiers: list[str]
    quorum: int
    trusted_keys: list[bytes] = field(default_factory=list)
    trust_on_first_use: bool = False
    timeout: float = 10.0
    on_no_quorum: str = "flag"


def key_value(value: Any, where: str) -> bytes:
    """A verifier key from a policy or command-line value (64 hex digits, a signed-note key or a file)."""
    if isinstance(value, bytes) and len(value) == 32:
        return value
    if not isinstance(value, str):
        raise ConfigError("verifier key must be a string (64 hex digits or a file)", field=where, got=value)
    try:
        return parse_key_arg(value)
    except SpecguardError as exc:
        raise ConfigError(f"not a public key: {exc.message}", field=where, got=value[:100],
                          expected="64 hex digits, a signed-note key or a key file") from exc


def consensus_config(node: NodeContext) -> ConsensusConfig | None:
    """The node's consensus settings (command line over policy), or None when no verifiers are set.

    The quorum is the command line's, else the policy's, else n - f of the n verifiers; it is
    fixed here and never taken from a certificate.
    """
    pol = consensus_policy(node.policy)
    cons = node.consensus
    urls: list[str] = []
    keys: list[bytes] = list(pol.verifier_entry_keys) if not cons.get("verifiers") else []
    if cons.get("verifiers"):
        for i, entry in enumerate(cons["verifiers"]):
            url, key = _verifier_entry(entry, f"--verifier[{i}]")
            urls.append(url)
            if key is not None:
                keys.append(key)
    else:
        urls = list(pol.verifiers)
    if not urls:
        return None
    from .credentials import verifier_headers

    for url in urls:  # a key per verifier, never in plaintext: fail at start, not at the first vote
        verifier_headers(url)
    keys.extend(pol.verifier_keys)
    for i, k in enumerate(cons.get("verifier_keys") or []):
        keys.append(key_value(k, f"--verifier-key[{i}]"))
    keys = list(dict.fromkeys(keys))
    quorum = cons.get("quorum") or pol.quorum or default_quorum(len(urls))
    if not 1 <= int(quorum) <= len(urls):
        raise ConfigError("consensus quorum must be between 1 and the number of verifiers", field="consensus.quorum",
                          got=quorum, expected=f"1..{len(urls)}")
    return ConsensusConfig(verifiers=urls, quorum=int(quorum), trusted_keys=keys,
                           trust_on_first_use=pol.trust_on_first_use, timeout=pol.timeout_seconds,
                           on_no_quorum=pol.on_no_quorum)


# --- a verifier's settings -----------------------------------------------------------------------


def allowed_nodes(node: NodeContext) -> tuple[bytes, ...] | None:
    """The serving-node keys a verifier accepts receipts from: the command line / environment
    (`node.consensus["allowed_nodes"]`) over the policy's `allowed_nodes`; None = any node."""
    cons = node.consensus
    given = cons.get("allowed_nodes")
    if given is not None:
        return tuple(key_value(k, f"allowed_nodes[{i}]") for i, k in enumerate(given))
    return consensus_policy(node.policy).allowed_nodes


def allowed_nodes_from_env(environ: dict[str, str] | None = None) -> list[bytes] | None:
    """Keys listed in SPECGUARD_VERIFIER_ALLOWED_NODES (comma-separated hex or files), or None."""
    raw = (os.environ if environ is None else environ).get(ALLOWED_NODES_ENV)
    if raw is None:
        return None
    return [key_value(part.strip(), ALLOWED_NODES_ENV) for part in raw.split(",") if part.strip()]


# --- URLs ------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """`url` without user info (user:password@): what certificates, errors and logs may show."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.username is None and parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


class RedactUserInfo(logging.Filter):
    """A logging filter that removes user info from every URL in a record's message (HTTP client
    libraries log the request URL as given)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = _USERINFO.sub(r"\g<scheme>", message), None
        return True


def redact_http_client_logs() -> None:
    """Install `RedactUserInfo` on the HTTP client loggers (once)."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactUserInfo) for f in logger.filters):
            logger.addFilter(RedactUserInfo())


def redact_text(text: str, url: str) -> str:
    """`text` with every occurrence of `url`'s user info removed (error messages may quote the URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    if "@" not in parts.netloc:
        return text
    userinfo = parts.netloc.rsplit("@", 1)[0]
    text = text.replace(url, redact_url(url))
    return text.replace(userinfo + "@", "").replace(userinfo, "<redacted>")
