"""Gather verifier votes in parallel and build / verify quorum certificates.

A quorum certificate is the JSON object

    {"type": "specguard/quorum-certificate/v2",
     "receipt_digest": "sha256:<hex>",   # of the canonical DSSE envelope (vote.envelope_digest)
     "binding_digest": "sha256:<hex>",   # Transcript.binding_digest(), as in the receipt
     "request_digest": "sha256:<hex>",   # the receipt's request digest (of the client's request)
     "response_digest": "sha256:<hex>",  # the receipt's subject digest (of the response body)
     "nonce": "<hex>",                   # the requester's fresh nonce, bound by every vote
     "quorum": q, "verifiers": n,        # policy at issue time: q accepts needed of n asked
     "accepts": k, "certified": k >= q,
     "votes": [<signed vote>...],        # every valid vote received, accepting or dissenting
     "dissent": [{"key_id", "verdict", "reasons"}...],   # copied from the non-accepting votes
     "failures": [{"verifier": url, "error": text}...],  # verifiers that gave no valid vote (URLs without
                                                         # user info)
     "issued_at": "<RFC 3339>"}

Only the signed votes are evidence. Offline verification (`verify_certificate`) recounts them:
each must verify under a trusted key, keys must be distinct, and each vote's receipt, binding,
request and response digests and nonce must equal the certificate's, which must equal the
receipt's (so replayed votes do not count); the number of accepting votes must reach
max(certificate quorum, the verifier's own minimum). v2 (this format) adds the request and
response digests; v1 certificates (votes that never saw the request or body) do not parse.
`accepts`, `certified`, `dissent` and `failures` are informational and never trusted.

Safety with n = 3f + 1 verifiers and q in [f + 1, 2f + 1]: f faulty verifiers cannot reach q
accepts on their own (no wrong response certified) and cannot withhold n - f >= q honest accepts
(no correct response blocked).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attest.jsonio import Require
from ..errors import ConfigError, ParseError, SpecguardError, VerificationError
from ..keys import key_id_for
from .config import redact_http_client_logs, redact_text, redact_url
from .credentials import verifier_headers
from .profiles import DEFAULT_ACCEPTED, ProfileError, describe, is_accepted, vote_profile
from .rederive import ACCEPT
from .vote import Vote, VoteParseError, VoteSubject, envelope_digest, utc_now, verify_vote

log = logging.getLogger("specguard.consensus")

CERTIFICATE_TYPE = "specguard/quorum-certificate/v2"
VERIFY_PATH = "/specguard/v1/verify"
KEY_PATH = "/specguard/v1/verifier/key"
MAX_VOTES = 64
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NONCE = re.compile(r"(?:[0-9a-f]{2}){8,64}")
_CERT_KEYS = {"type", "receipt_digest", "binding_digest", "request_digest", "response_digest", "nonce", "quorum",
              "verifiers", "accepts", "certified", "votes", "dissent", "failures", "issued_at"}
_BOUND = ("receipt_digest", "binding_digest", "request_digest", "response_digest", "nonce")
#: Outbound verify calls in flight at once, over all requests of this process. A call that would
#: exceed it fails at once ("too many verifier calls in flight") instead of queueing a thread.
MAX_INFLIGHT_CALLS = 64
#: Seconds the whole gathering may take beyond the per-verifier timeout.
GRACE_SECONDS = 1.0
_INFLIGHT = threading.BoundedSemaphore(MAX_INFLIGHT_CALLS)
redact_http_client_logs()  # the HTTP client logs request URLs: never with a verifier's credentials


class CertificateParseError(ParseError):
    """A quorum certificate is not well-formed (exit code 3)."""


_creq = Require(CertificateParseError)


class QuorumError(VerificationError):
    """A quorum certificate does not carry enough valid accepting votes (exit code 4)."""


def new_nonce() -> str:
    """A fresh 128-bit request nonce (lowercase hex)."""
    return secrets.token_hex(16)


# --- gathering --------------------------------------------------------------------------------


@dataclass
class GatherResult:
    """What the verifiers answered: valid votes (signature, digests and nonce checked) and failures."""

    votes: list[Vote] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _post_one(url: str, body: dict[str, Any], timeout: float) -> Any:
    # specguard.web.http: a hard deadline for the whole exchange, no env proxies, no redirects, a
    # byte cap, and errors that name the URL without credentials
    from ..errors import DeadlineExceeded, OutboundError
    from ..web import http

    try:
        headers = verifier_headers(url)  # this verifier's own key, never another's (credentials.py)
        with http.client(timeouts=http.Timeouts.of(timeout), max_connections=1, headers=headers,
                         cacert=http.cacert_for(url)) as client:
            resp = http.request(client, "POST", url.rstrip("/") + VERIFY_PATH, json=body, timeout=timeout,
                                max_bytes=1 << 20)
    except DeadlineExceeded as exc:
        raise SpecguardError(f"timed out after {timeout:g} s") from exc
    except OutboundError as exc:
        raise SpecguardError(f"unreachable: {exc.summary()}"[:300]) from exc
    if resp.status_code != 200:
        raise SpecguardError(f"answered HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        return resp.json()
    except OutboundError as exc:
        raise SpecguardError("answered something that is not JSON") from exc


@dataclass(frozen=True)
class Bound(VoteSubject):
    """What every vote of one request must bind: receipt, binding, request and response digests, nonce."""
    @classmethod
    def of_receipt(cls, envelope: dict[str, Any], nonce: str) -> Bound:
        """The digests a receipt envelope signs (its statement's), with `nonce`."""
        statement = _statement_of(envelope)
        try:
            predicate = statement["predicate"]
            return cls(envelope_digest(envelope), predicate["binding_digest"], predicate["request_digest"],
                       "sha256:" + statement["subject"][0]["digest"]["sha256"], nonce)
        except (KeyError, IndexError, TypeError) as exc:
            raise CertificateParseError("receipt statement lacks the digests a vote binds", field="envelope.payload",
                                        got=f"{type(exc).__name__}: {exc}"[:200]) from exc


def check_vote(obj: Any, trusted_keys: list[bytes], bound: Bound, model_digest: str | None = None,
               where: str = "vote") -> Vote:
    """Verify one vote for this request: trusted signature, same receipt, binding, request,
    response and nonce. An accepting vote must also name the response's model digest (when known).
    """
    vote = verify_vote(obj, trusted_keys, where)
    for name in _BOUND:
        want = getattr(bound, name)
        if vote.body[name] != want:
            raise VoteMismatchError(f"vote is for another {name.replace('_', ' ')} (replayed or misdirected)",
                                    field=f"{where}.vote.{name}", got=vote.body[name], expected=want)
    if model_digest is not None and vote.verdict == ACCEPT and vote.body["verifier"]["model_digest"] != model_digest:
        raise VoteMismatchError("accepting vote was made with another model", field=f"{where}.vote.verifier.model_digest",
                                got=vote.body["verifier"]["model_digest"], expected=model_digest)
    return vote


class VoteMismatchError(VerificationError):
    """A validly signed vote is for another receipt, binding, request, response or nonce (a replay)."""


@dataclass(frozen=True)
class ReceiptedResponse:
    """What verifiers re-check: the response's transcript (`Transcript.to_json()`), its receipt document
    (or bare DSSE envelope), the client's request and the response body the client received."""

    transcript: dict[str, Any]
    receipt: dict[str, Any]
    request: dict[str, Any]
    response: dict[str, Any]

    @property
    def envelope(self) -> dict[str, Any]:
        return self.receipt["envelope"] if "envelope" in self.receipt else self.receipt

    def verify_body(self, nonce: str) -> dict[str, Any]:
        """The body POSTed to each verifier (the response without its "specguard" key)."""
        return {"transcript": self.transcript, "receipt": self.receipt, "request": self.request,
                "response": {k: v for k, v in self.response.items() if k != "specguard"}, "nonce": nonce}


def gather_votes(
    verifiers: list[str],
    checked: ReceiptedResponse,
    trusted_keys: list[bytes],
    *,
    nonce: str,
    timeout: float = 10.0,
    model_digest: str | None = None,
) -> GatherResult:
    """Ask every verifier URL in parallel; keep the valid votes, record why the others failed.

    Each call has `timeout` seconds; the whole gathering returns after `timeout` + GRACE_SECONDS
    at the latest, whatever slow verifiers do. Calls run on a pool sized for this round whose
    threads exit when their call returns; at most MAX_INFLIGHT_CALLS calls are in flight in the
    process (beyond that a verifier is recorded as a failure, no thread is started). Failures
    name verifiers by their URL without user info.
    """
    bound = Bound.of_receipt(checked.envelope, nonce)
    body = checked.verify_body(nonce)
    result = GatherResult()
    start = time.perf_counter()
    if not verifiers:
        return result
    deadline = time.monotonic() + timeout + GRACE_SECONDS
    pool = ThreadPoolExecutor(max_workers=min(len(verifiers), MAX_INFLIGHT_CALLS), thread_name_prefix="specguard-vote")
    futures: dict[Future[Any], str] = {}
    try:
        inflight = _INFLIGHT
        for url in verifiers:
            if not inflight.acquire(blocking=False):
                result.failures.append({"verifier": redact_url(url),
                                        "error": f"not asked: {MAX_INFLIGHT_CALLS} verifier calls already in flight"})
                continue
            try:
                fut = pool.submit(_post_one, url, body, timeout)
            except RuntimeError:
                inflight.release()
                raise
            fut.add_done_callback(lambda _done, sem=inflight: sem.release())  # when the call ends or is cancelled
            futures[fut] = url
        _, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        seen: set[bytes] = set()
        for fut, url in futures.items():
            shown = redact_url(url)
            if fut in pending:
                result.failures.append({"verifier": shown, "error": f"no answer within {timeout:g} s"})
                continue
            try:
                vote = check_vote(fut.result(), trusted_keys, bound, model_digest)
            except SpecguardError as exc:
                result.failures.append({"verifier": shown, "error": redact_text(exc.summary(), url)[:400]})
                continue
            if vote.public_key in seen:
                result.failures.append({"verifier": shown, "error": f"duplicate vote by key {vote.key_id}"})
                continue
            seen.add(vote.public_key)
            result.votes.append(vote)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    result.seconds = time.perf_counter() - start
    for failure in result.failures:
        log.warning("consensus: verifier %s gave no valid vote: %s", failure["verifier"], failure["error"])
    return result


def _binding_of(transcript_json: dict[str, Any]) -> str:
    from ..transcript import Transcript

    try:
        return Transcript.from_json(transcript_json).binding_digest()
    except (KeyError, TypeError, ValueError) as exc:
        raise CertificateParseError("transcript JSON is malformed", field="transcript", got=str(exc)) from exc


def build_certificate(bound: Bound, quorum: int, n_verifiers: int, gathered: GatherResult) -> dict[str, Any]:
    """The certificate JSON for the votes gathered (certified when accepts >= quorum)."""
    accepts = sum(1 for v in gathered.votes if v.verdict == ACCEPT)
    return {
        "type": CERTIFICATE_TYPE,
        "receipt_digest": bound.receipt_digest,
        "binding_digest": bound.binding_digest,
        "request_digest": bound.request_digest,
        "response_digest": bound.response_digest,
        "nonce": bound.nonce,
        "quorum": int(quorum),
        "verifiers": int(n_verifiers),
        "accepts": accepts,
        "certified": accepts >= quorum,
        "votes": [v.to_json() for v in gathered.votes],
        "dissent": [{"key_id": v.key_id, "verdict": v.verdict, "reasons": list(v.body["reasons"])}
                    for v in gathered.votes if v.verdict != ACCEPT],
        "failures": [{"verifier": redact_url(f["verifier"]), "error": f["error"]} for f in gathered.failures],
        "issued_at": utc_now(),
    }


def request_certificate(
    verifiers: list[str],
    checked: ReceiptedResponse,
    trusted_keys: list[bytes],
    quorum: int,
    *,
    timeout: float = 10.0,
    nonce: str | None = None,
) -> dict[str, Any]:
    """Gather votes with a fresh nonce on `checked` (the client's request, the response body, its
    transcript and receipt), and build the certificate (certified or not)."""
    if quorum < 1:
        raise ConfigError("consensus quorum must be at least 1", field="quorum", got=quorum)
    if quorum > len(verifiers):
        raise ConfigError("consensus quorum is larger than the number of verifiers", field="quorum",
                          got=quorum, expected=f"<= {len(verifiers)}")
    nonce = nonce or new_nonce()
    model_digest = checked.transcript.get("model_digest") if isinstance(checked.transcript, dict) else None
    gathered = gather_votes(verifiers, checked, trusted_keys, nonce=nonce, timeout=timeout, model_digest=model_digest)
    return build_certificate(Bound.of_receipt(checked.envelope, nonce), quorum, len(verifiers), gathered)


# --- offline verification ---------------------------------------------------------------------


@dataclass
class VerifiedCertificate:
    """What `verify_certificate` established."""

    receipt_digest: str
    binding_digest: str
    nonce: str
    quorum: int
    accepted_by: list[str]  # key ids of valid accepting votes
    dissent: list[dict[str, Any]]  # valid non-accepting votes: key_id, verdict, reasons
    ignored: list[str]  # why other votes did not count
    accepted_verifiers: list[dict[str, Any]] = field(default_factory=list)  # the accepting votes' verifier objects
    request_digest: str = ""
    response_digest: str = ""
    #: every valid vote: key_id, verdict, profile, margin, deviations, cap, counted (what it rests on)
    votes: list[dict[str, Any]] = field(default_factory=list)
    accepted_profiles: tuple[str, ...] = DEFAULT_ACCEPTED

    def to_json(self) -> dict[str, Any]:
        return {"certified": True, "receipt_digest": self.receipt_digest, "binding_digest": self.binding_digest,
                "request_digest": self.request_digest, "response_digest": self.response_digest,
                "nonce": self.nonce, "quorum": self.quorum, "accepts": len(self.accepted_by),
                "accepted_by": self.accepted_by, "dissent": self.dissent, "ignored": self.ignored,
                "accepted_profiles": list(self.accepted_profiles), "votes": self.votes}


def vote_summary(vote: Vote, accepted: tuple[str, ...]) -> dict[str, Any]:
    """What one valid vote rests on (from its signed stats) and whether its profile is accepted."""
    stats = vote.body["stats"]
    try:
        profile: str | None = vote_profile(stats)
    except ProfileError:
        profile = None
    return {"key_id": vote.key_id, "verdict": vote.verdict, "profile": profile,
            "margin": stats.get("margin"), "deviations": stats.get("deviations", stats.get("near_ties")),
            "max_deviations": stats.get("max_deviations", stats.get("max_near_ties")),
            "profile_accepted": profile is not None and is_accepted(profile, accepted),
            "summary": describe(stats)}


def _profile_refusal(vote: Vote, accepted: tuple[str, ...], where: str) -> str | None:
    """Why an accepting vote does not count under the auditor's accepted profiles (None: it counts)."""
    try:
        profile = vote_profile(vote.body["stats"])
    except ProfileError as exc:
        return f"{where}: {exc.summary()}"[:300]
    if is_accepted(profile, accepted):
        return None
    return (f"{where}: vote by {vote.key_id} rests on tolerance profile {profile!r} ({describe(vote.body['stats'])}), "
            f"which is not accepted (accepted: {', '.join(accepted)}); a {profile.split(':')[0]} vote does not rule "
            f"out a node choosing other tokens within the margin. To accept it: --accept-profile {profile}")[:500]


def parse_certificate(cert: Any) -> dict[str, Any]:
    """Check a certificate's structure (votes are parsed later, one by one)."""
    _creq(isinstance(cert, dict), "must be a JSON object", "consensus", type(cert).__name__)
    _creq(cert.get("type") == CERTIFICATE_TYPE, "unknown certificate type (v1 certificates do not bind the request "
          "and response)", "consensus.type", cert.get("type"), CERTIFICATE_TYPE)
    _creq(set(cert) == _CERT_KEYS, "unexpected or missing keys", "consensus", sorted(cert), sorted(_CERT_KEYS))
    for name in ("receipt_digest", "binding_digest", "request_digest", "response_digest"):
        _creq(isinstance(cert[name], str) and bool(_DIGEST.fullmatch(cert[name])), "must be sha256:<64 hex>",
              f"consensus.{name}", cert[name])
    _creq(isinstance(cert["nonce"], str) and bool(_NONCE.fullmatch(cert["nonce"])),
          "must be 16..128 lowercase hex digits", "consensus.nonce", cert["nonce"])
    for name in ("quorum", "verifiers", "accepts"):
        value = cert[name]
        _creq(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VOTES,
              f"must be an integer in 0..{MAX_VOTES}", f"consensus.{name}", value)
    _creq(isinstance(cert["votes"], list) and len(cert["votes"]) <= MAX_VOTES,
          f"must be a list of at most {MAX_VOTES} votes", "consensus.votes")
    return cert


def verify_certificate(
    cert: Any,
    envelope: dict[str, Any] | None,
    trusted_keys: list[bytes],
    quorum: int | None = None,
    *,
    binding_digest: str | None = None,
    model_digest: str | None = None,
    accept_profiles: tuple[str, ...] | None = None,
) -> VerifiedCertificate:
    """Verify a quorum certificate offline; raise unless at least q trusted verifiers accepted.

    An accepting vote counts only when its signed tolerance profile is in `accept_profiles`
    (default `profiles.DEFAULT_ACCEPTED`: exact and same-engine; see specguard.consensus.profiles):
    the auditor, not the serving node, chooses the tolerance a certificate rests on.

    `envelope` is the receipt's DSSE envelope: its digest must be the certificate's receipt
    digest, and its statement gives the binding, request, response and model digests the votes
    must bind. Without it, `binding_digest` must be given (and the certificate's own request and
    response digests are what the votes are checked against). The quorum is max(certificate's
    quorum, `quorum`): no field of the certificate can lower the caller's minimum.
    """
    cert = parse_certificate(cert)
    keys = [bytes(k) for k in trusted_keys or []]
    if not keys or any(len(k) != 32 for k in keys):
        raise QuorumError("no trusted verifier keys (32-byte Ed25519) given: cannot verify a quorum certificate",
                          field="verifier_keys", got=len(keys))
    if envelope is not None:
        got = envelope_digest(envelope)
        if got != cert["receipt_digest"]:
            raise QuorumError("certificate is for another receipt", field="consensus.receipt_digest",
                              got=cert["receipt_digest"], expected=got)
        signed = Bound.of_receipt(envelope, cert["nonce"])
        for name in ("binding_digest", "request_digest", "response_digest"):
            if cert[name] != getattr(signed, name):
                raise QuorumError(f"certificate is for another {name.split('_')[0]} than the receipt signs",
                                  field=f"consensus.{name}", got=cert[name], expected=getattr(signed, name))
        statement = _statement_of(envelope)
        predicate = statement.get("predicate", {}) if isinstance(statement, dict) else {}
        binding_digest = binding_digest or predicate.get("binding_digest")
        model = predicate.get("model") if isinstance(predicate.get("model"), dict) else {}
        model_digest = model_digest or model.get("digest")
    if binding_digest is None:
        raise QuorumError("no receipt envelope or binding digest to check the certificate against",
                          field="envelope")
    if cert["binding_digest"] != binding_digest:
        raise QuorumError("certificate is for another response", field="consensus.binding_digest",
                          got=cert["binding_digest"], expected=binding_digest)
    q = max(int(cert["quorum"]), int(quorum or 0))
    if q < 1:
        raise QuorumError("quorum must be at least 1", field="consensus.quorum", got=q)
    bound = Bound(*(cert[name] for name in _BOUND))
    profiles = tuple(accept_profiles) if accept_profiles is not None else DEFAULT_ACCEPTED
    tally = _tally(cert["votes"], keys, bound, model_digest, profiles)
    accepted, dissent, ignored = tally.accepted, tally.dissent, tally.ignored
    if len(accepted) < q:
        raise QuorumError(
            f"no quorum: {len(accepted)} valid accepting vote(s) from trusted verifiers, need {q}"
            + (f"; dissent: {[(d['key_id'], d['verdict']) for d in dissent]}" if dissent else "")
            + (f"; ignored: {ignored}" if ignored else ""),
            field="consensus.votes", got=len(accepted), expected=f">= {q}")
    return VerifiedCertificate(cert["receipt_digest"], cert["binding_digest"], cert["nonce"], q, accepted,
                               dissent, ignored, tally.verifiers, cert["request_digest"], cert["response_digest"],
                               tally.summaries, profiles)


@dataclass
class _Tally:
    accepted: list[str] = field(default_factory=list)  # key ids of counted accepting votes
    dissent: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # why a vote did not count
    verifiers: list[dict[str, Any]] = field(default_factory=list)  # the counted votes' verifier objects
    summaries: list[dict[str, Any]] = field(default_factory=list)  # every valid vote's profile, margin, deviations


def _tally(votes: list[Any], keys: list[bytes], bound: Bound, model_digest: str | None,
           profiles: tuple[str, ...]) -> _Tally:
    """Check each vote (signature, binding, distinct keys) and count the accepting ones whose profile is accepted."""
    out = _Tally()
    seen: set[bytes] = set()
    for i, obj in enumerate(votes):
        where = f"consensus.votes[{i}]"
        try:
            vote = check_vote(obj, keys, bound, model_digest, where)
        except (VoteParseError, VerificationError) as exc:
            out.ignored.append(exc.summary()[:300])
            continue
        if vote.public_key in seen:
            out.ignored.append(f"{where}: second vote by key {vote.key_id}")
            continue
        seen.add(vote.public_key)
        out.summaries.append(vote_summary(vote, profiles))
        refusal = _profile_refusal(vote, profiles, where) if vote.verdict == ACCEPT else None
        if refusal is not None:
            out.ignored.append(refusal)
        elif vote.verdict == ACCEPT:
            out.accepted.append(vote.key_id)
            out.verifiers.append(dict(vote.body["verifier"]))
        else:
            out.dissent.append({"key_id": vote.key_id, "verdict": vote.verdict, "reasons": vote.body["reasons"]})
    return out


def check_verifier_evidence(verified: VerifiedCertificate, documents: list[Any], policy: Any,
                            **verify_options: Any) -> list[dict[str, Any]]:
    """Verify TEE evidence documents of accepting verifiers; return one summary per document.

    Each document must be the one an accepting vote names (`verifier.attestation_digest`), and
    it must bind that verifier's vote-signing key; it is then verified and validated like a
    node's evidence (`attest.tee.document.verify_document` under `policy`). A document no
    accepting vote names raises: evidence that is not bound to a counted vote proves nothing.
    """
    from ..attest.tee.document import load_document, verify_document

    by_digest = {v["attestation_digest"]: v for v in verified.accepted_verifiers if v.get("attestation_digest")}
    out: list[dict[str, Any]] = []
    for i, source in enumerate(documents):
        doc = load_document(source)
        verifier = by_digest.get(doc.digest())
        if verifier is None:
            raise QuorumError("verifier evidence is not named by any accepting vote",
                              field=f"verifier_evidence[{i}]", got=doc.digest(), expected=sorted(by_digest) or None)
        result = verify_document(doc, policy, expected_public_key=bytes.fromhex(verifier["public_key"]),
                                 **verify_options)
        out.append({"key_id": verifier["key_id"], "evidence_digest": doc.digest(), "type": doc.type,
                    "simulated": doc.simulated, "tcb_status": result.tcb_status})
    return out


def _statement_of(envelope: dict[str, Any]) -> Any:
    from ..attest.dsse import parse_envelope

    try:
        return json.loads(parse_envelope(envelope).payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CertificateParseError("receipt envelope payload is not JSON", field="envelope.payload") from exc


# --- trusted keys -----------------------------------------------------------------------------


def fetch_verifier_key(url: str, timeout: float = 5.0) -> bytes:
    """A verifier's public key from GET /specguard/v1/verifier/key (unauthenticated: TOFU only)."""
    from ..errors import OutboundError
    from ..web import http

    shown = http.redact_url(url)
    headers = verifier_headers(url)  # verifiers started with --api-key guard this route too
    try:
        with http.client(timeouts=http.Timeouts.of(timeout), max_connections=1, headers=headers,
                         cacert=http.cacert_for(url)) as client:
            resp = http.request(client, "GET", url.rstrip("/") + KEY_PATH, timeout=timeout, max_bytes=64 << 10)
        data = resp.json() if resp.status_code == 200 else None
    except OutboundError as exc:
        raise ConfigError("cannot fetch the verifier key", field=shown, got=http.failure_reason(exc)[:200]) from exc
    hex_key = data.get("public_key") if isinstance(data, dict) else None
    if not isinstance(hex_key, str) or not re.fullmatch(r"[0-9a-f]{64}", hex_key):
        raise ConfigError("verifier key endpoint answered no valid public key", field=shown, got=str(data)[:200])
    return bytes.fromhex(hex_key)


def pinned_keys(urls: list[str], pin_file: Path, timeout: float = 5.0) -> list[bytes]:
    """Trust-on-first-use: the key pinned for each URL, fetching and pinning unknown ones.

    INSECURE on first contact (an attacker on the path could answer with its own key); later
    contacts use the pinned key. Pins live in `pin_file` (JSON {url without user info: hex key}).
    """
    pins: dict[str, str] = {}
    if pin_file.is_file():
        try:
            loaded = json.loads(pin_file.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError("cannot read pinned verifier keys", field=str(pin_file), got=str(exc)) from exc
        if isinstance(loaded, dict):
            pins = {k: v for k, v in loaded.items() if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)}
    changed = False
    for url in urls:
        if redact_url(url) not in pins:
            try:
                key = fetch_verifier_key(url, timeout)
            except ConfigError as exc:
                log.warning("consensus: cannot pin a key for %s yet: %s", redact_url(url),
                            redact_text(exc.summary(), url))
                continue
            log.warning("INSECURE trust-on-first-use: pinned verifier key %s for %s", key_id_for(key), redact_url(url))
            pins[redact_url(url)] = key.hex()  # no credentials on disk
            changed = True
    if changed:
        pin_file.parent.mkdir(parents=True, exist_ok=True)
        pin_file.write_text(json.dumps(pins, indent=2, sort_keys=True), "utf-8")
    return [bytes.fromhex(pins[redact_url(u)]) for u in urls if redact_url(u) in pins]

