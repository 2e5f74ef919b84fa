"""The verifier side: judge one POST /specguard/v1/verify request and answer with a signed vote.

Request body (v2): {"transcript": Transcript.to_json(), "receipt": receipt document or DSSE
envelope, "request": the client's request object (what the receipt's request digest covers),
"response": the response body (what the receipt's subject digest covers), "nonce": lowercase
hex (16..128 digits)}. The verifier

1. parses the receipt envelope and its in-toto statement, checks the envelope signature under
   the node key the statement names, and that this key is on its allow-list (when it has one);
2. refuses work it cannot do before any model work: over-long transcripts (prompt + output
   longer than the model's context) get HTTP 400;
3. checks that the transcript, request and response are the ones the receipt signs (binding
   digest, output ids digest, token-records root, request digest, subject digest);
4. re-derives the prompt from the request through the pinned tokenizer and chat template (the
   server's own code, `specguard.openai.prompting`) and the sampling parameters from the request;
5. re-derives the transcript with its own copy of the model (`rederive.judge`);
6. rebuilds the body an honest node would have sent for these output ids (text = decoding with
   stop trimming, logprobs = the re-derived ones, finish reason, usage) and compares it with the
   response, logprobs within the tolerance;
7. signs a vote binding the receipt, binding, request and response digests, the requester's
   nonce and the verdict.

Malformed requests get a `VerifyRequestError` (HTTP 400) and no vote; receipts from serving
nodes not on the allow-list get `NodeNotAllowedError` (HTTP 403). Well-formed requests whose
parts disagree get a signed "reject" vote saying why.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..attest import dsse
from ..attest.disclosure import token_records_root
from ..attest.receipts.parse import parse_statement
from ..attest.receipts.sealed import open_statement
from ..attest.receipts.wire import (
    DISCLOSURE_KEY,
    ENGINE_KEY,
    RESPONSE_DIGEST_KEY,
    RESPONSE_DIGEST_V1,
    request_digest,
    response_digest,
)
from ..attest.request_defaults import (
    DEFAULTS_KEY,
    ExpectedDefaults,
    ParamsMismatchError,
    RequestDefaults,
    check_params,
)
from ..errors import ConfigError, ParseError, RequestError, SpecguardError, VerificationError
from ..keys import NodeKey, key_id_for
from ..transcript import TokenRecord, Transcript, ids_digest
from .config import ALLOWED_NODES_ENV, allowed_nodes
from .rederive import ACCEPT, REJECT, UNVERIFIABLE, Judgement, Tolerances, judge
from .vote import VoteSubject, envelope_digest, sign_vote

if TYPE_CHECKING:
    from ..context import NodeContext

log = logging.getLogger("specguard.consensus.verifier")

_NONCE = re.compile(r"(?:[0-9a-f]{2}){8,64}")
MAX_OUTPUT_TOKENS = 8192
#: A prompt's text cannot be longer than this many UTF-8 bytes per prompt token (plus slack for the
#: template): longer requests are refused before tokenizing them.
MAX_BYTES_PER_TOKEN = 256
PROMPT_SLACK_BYTES = 4096
MAX_BODY_DIFFS = 8
REQUIRED_KEYS = ("transcript", "receipt", "request", "response", "nonce")


class VerifyRequestError(RequestError):
    """A verify request is malformed or too large to judge (HTTP 400, no vote)."""

    http_status = 400


class NodeNotAllowedError(RequestError):
    """The receipt is signed by a serving node this verifier does not serve (HTTP 403, no vote)."""

    http_status = 403


@dataclass
class VerifyRequest:
    """A parsed verify request (structure checked, receipt signature verified)."""

    transcript: Transcript
    envelope: dict[str, Any]
    statement: dict[str, Any]
    request: dict[str, Any]
    response: dict[str, Any]
    nonce: str
    client: Any = None  # the request parsed by the server's own request models
    secret: str | None = None  # the receipt secret (format-2 receipts salt their digests with it)

    @property
    def request_digest(self) -> str:
        return request_digest(self.request, self.secret)

    @property
    def response_digest(self) -> str:
        version = self.statement["predicate"].get(RESPONSE_DIGEST_KEY, RESPONSE_DIGEST_V1)
        return "sha256:" + response_digest(self.response, version, self.secret)


def _attestation_digest(node: NodeContext) -> str | None:
    """The digest of the node's own TEE evidence (from the node_attestation hook), or None."""
    given = node.attestation_digest
    if given is not None:
        return given
    from ..plugin_manager import load_plugins

    info = load_plugins().hook.node_attestation(node=node)
    return info["evidence_digest"] if info else None


def _expected_defaults(node: NodeContext) -> ExpectedDefaults:
    """The policy's [request_defaults] pins; else 256 tokens and the verifier's model context length."""
    pins = node.policy.request_defaults if node.policy is not None else ExpectedDefaults()
    return dataclasses.replace(pins, context_length=pins.context_length or node.model.max_context)


@dataclass
class VerifierService:
    """Holds the verifier's model, key, tolerances and allow-list; `handle` answers one verify request."""

    model: Any  # LoadedModel
    key: NodeKey
    tolerances: Tolerances = field(default_factory=Tolerances)
    attestation_digest: str | None = None
    allowed_nodes: tuple[bytes, ...] | None = None  # None: receipts of any serving node
    #: defaults an omitted request field may take (None: 256 tokens, this model's context length)
    expected_defaults: ExpectedDefaults | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _text_of: Any = field(default=None, repr=False)

    @classmethod
    def for_node(cls, node: NodeContext) -> VerifierService:
        """The service for a node (model, signing key, [consensus] policy tolerances and allow-list)."""
        key = node.node_key
        allowed = allowed_nodes(node)
        policy = node.policy
        if allowed is None and policy is not None and not policy.insecure:
            raise ConfigError("a verifier outside dev must name the serving nodes it judges: without an allow-list "
                              "anyone can make it re-derive work signed with their own key",
                              field="consensus.allowed_nodes", got=policy.name,
                              expected="[consensus] allowed_nodes, --allowed-node or " + ALLOWED_NODES_ENV)
        if allowed is None:
            log.warning("consensus verifier accepts receipts from ANY serving node: set [consensus] allowed_nodes "
                        "(or --allowed-node) to serve only yours")
        return cls(model=node.model, key=key, tolerances=Tolerances.from_policy(node.policy, node.model),
                   attestation_digest=_attestation_digest(node), allowed_nodes=allowed,
                   expected_defaults=_expected_defaults(node))

    def public_info(self) -> dict[str, Any]:
        """GET /specguard/v1/verifier/key."""
        return {"key_id": self.key.key_id, "public_key": self.key.public_hex, "model_digest": self.model.digest,
                "tokenizer_digest": self.model.tokenizer_digest, "attestation_digest": self.attestation_digest}

    def handle(self, body: Any) -> dict[str, Any]:
        """Judge one request body; return the signed vote JSON."""
        req = self.parse(body)
        return self.vote(req, self.judge(req))

    # -- steps ---------------------------------------------------------------------------------

    def parse(self, body: Any) -> VerifyRequest:
        """Check the request's structure, the receipt signature and allow-list, and the sizes."""
        if not isinstance(body, dict) or not set(REQUIRED_KEYS) <= set(body):
            raise VerifyRequestError("body must be an object with " + ", ".join(REQUIRED_KEYS), field="body",
                                     got=sorted(body) if isinstance(body, dict) else type(body).__name__,
                                     expected=list(REQUIRED_KEYS))
        nonce = body["nonce"]
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise VerifyRequestError("nonce must be 16..128 lowercase hex digits", field="nonce", got=nonce)
        for name in ("request", "response"):
            if not isinstance(body[name], dict):
                raise VerifyRequestError(f"{name} must be a JSON object", field=name, got=type(body[name]).__name__)
        receipt = body["receipt"]
        envelope = receipt.get("envelope") if isinstance(receipt, dict) and "envelope" in receipt else receipt
        try:
            parsed = dsse.parse_envelope(envelope)
            statement = parse_statement(parsed.payload)
            node_key = bytes.fromhex(statement["predicate"]["node"]["public_key"])
            dsse.verify_envelope(parsed, [node_key])
            statement, secret = open_statement(statement, receipt.get(DISCLOSURE_KEY) if isinstance(receipt, dict)
                                               else None)
        except (ParseError, VerificationError) as exc:
            raise VerifyRequestError(f"receipt does not verify: {exc.message}", field=exc.field or "receipt",
                                     got=exc.got, expected=exc.expected) from exc
        if self.allowed_nodes is not None and node_key not in self.allowed_nodes:
            raise NodeNotAllowedError("the receipt is signed by a serving node this verifier does not serve",
                                      field="receipt.predicate.node.public_key", got=key_id_for(node_key),
                                      expected=sorted(key_id_for(k) for k in self.allowed_nodes))
        raw = body["transcript"]
        try:
            if not isinstance(raw, dict):
                raise TypeError("transcript must be an object")
            transcript = Transcript.from_json(raw)
        except SpecguardError as exc:
            raise VerifyRequestError(f"transcript is invalid: {exc.message}", field=exc.field or "transcript",
                                     got=exc.got) from exc
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise VerifyRequestError("transcript is malformed", field="transcript",
                                     got=f"{type(exc).__name__}: {exc}"[:200]) from exc
        context = self.model.max_context
        total = len(transcript.prompt_ids) + len(transcript.output_ids)
        if len(transcript.output_ids) > MAX_OUTPUT_TOKENS or total > context:
            raise VerifyRequestError("transcript is longer than the model's context: nothing to re-derive",
                                     field="transcript.output_ids", got=f"{len(transcript.prompt_ids)} prompt + "
                                     f"{len(transcript.output_ids)} output tokens",
                                     expected=f"<= {context} tokens in all, <= {MAX_OUTPUT_TOKENS} output")
        client = _parse_client_request(body["request"])
        return VerifyRequest(transcript, envelope, statement, body["request"], body["response"], nonce, client, secret)

    def judge(self, req: VerifyRequest) -> Judgement:
        """The verdict on a parsed request: binding checks first (cheap), then re-derivation."""
        reasons = self._binding_reasons(req)
        if reasons:
            return Judgement(REJECT, reasons, {})
        client = req.client
        defaults = req.statement["predicate"].get(DEFAULTS_KEY)
        reasons = self._request_reasons(req.transcript, client,
                                        RequestDefaults.from_json(defaults) if defaults is not None else None)
        if reasons:
            return Judgement(REJECT, ["the transcript is not what the client's request gives"] + reasons, {})
        with self._lock:
            judgement = judge(self.model, req.transcript, self.tolerances)
            if judgement.verdict == UNVERIFIABLE:
                return judgement
            body_reasons = self._body_reasons(req, client, judgement)
        if body_reasons:
            judgement = Judgement(REJECT, judgement.reasons + ["the response body is not the one these output ids "
                                                               "give"] + body_reasons,
                                  judgement.stats, judgement.positions)
        return judgement

    def vote(self, req: VerifyRequest, judgement: Judgement, key: NodeKey | None = None) -> dict[str, Any]:
        """The signed vote for a judgement (`key` defaults to the verifier's own)."""
        subject = VoteSubject(envelope_digest(req.envelope), req.transcript.binding_digest(), req.request_digest,
                              req.response_digest, req.nonce)
        return sign_vote(key or self.key, subject, judgement, model_digest=self.model.digest,
                         attestation_digest=self.attestation_digest)

    # -- checks --------------------------------------------------------------------------------

    def _binding_reasons(self, req: VerifyRequest) -> list[str]:
        """The transcript, request and response must be the ones the receipt signs."""
        predicate = req.statement["predicate"]
        transcript = req.transcript
        out: list[str] = []
        if transcript.binding_digest() != predicate["binding_digest"]:
            out.append(f"binding_digest: transcript gives {transcript.binding_digest()}, receipt signs "
                       f"{predicate['binding_digest']}")
        if ids_digest(transcript.output_ids) != predicate["output_ids_digest"]:
            out.append("output_ids_digest: transcript output ids differ from the signed ones")
        root = token_records_root(list(transcript.tokens))
        if root != predicate["token_records_root"]:
            out.append(f"token_records_root: transcript token records give {root}, receipt signs "
                       f"{predicate['token_records_root']}")
        # the engine picks the tolerance: it must be the one the receipt shows the client (receipts from
        # before the engine field count as the exact built-in engine)
        engine = predicate.get(ENGINE_KEY)
        signed_engine = engine["name"] if isinstance(engine, dict) else "specguard"
        if transcript.engine != signed_engine:
            out.append(f"engine: the transcript names {transcript.engine!r}, the receipt signs {signed_engine!r}")
        # the model file digest picks the file a same-engine verifier re-executes: it must be the signed one
        signed_file = engine.get("model_file_digest", "") if isinstance(engine, dict) else ""
        if transcript.model_file_digest != signed_file:
            out.append(f"model_file_digest: the transcript names {transcript.model_file_digest!r}, the receipt signs "
                       f"{signed_file!r}")
        if out:
            return ["transcript is not the one the receipt signs"] + out
        if req.request_digest != predicate["request_digest"]:
            out.append(f"request_digest: the request given has digest {req.request_digest}, the receipt signs "
                       f"{predicate['request_digest']}")
        signed_body = "sha256:" + req.statement["subject"][0]["digest"]["sha256"]
        try:
            got_body = req.response_digest
        except SpecguardError as exc:
            got_body = f"<no digest: {exc.summary()[:100]}>"
        if got_body != signed_body:
            out.append(f"response_digest: the response body given has digest {got_body}, the receipt signs "
                       f"{signed_body}")
        return (["request or response is not the one the receipt signs"] + out) if out else []

    def _params_reasons(self, transcript: Transcript, client: Any, signed: RequestDefaults | None) -> list[str]:
        """The parameters are what the request resolves to (attest/request_defaults.py) under the node's
        signed defaults and the ones this verifier expects."""
        expected = self.expected_defaults or ExpectedDefaults(context_length=self.model.max_context)
        try:
            check_params(transcript.params.to_json(), client.model_dump(mode="json"), len(transcript.prompt_ids),
                         signed, expected)
        except (ParamsMismatchError, RequestError) as exc:
            return [f"params: {exc.summary()}"[:300]]
        return []

    def _request_reasons(self, transcript: Transcript, client: Any,
                         signed_defaults: RequestDefaults | None = None) -> list[str]:
        """The request, through the pinned tokenizer and template, gives the prompt ids and parameters."""
        from ..openai import prompting

        out: list[str] = []
        limit = MAX_BYTES_PER_TOKEN * len(transcript.prompt_ids) + PROMPT_SLACK_BYTES
        size = _prompt_bytes(client)
        if size > limit:
            return [f"prompt: the request's prompt has {size} bytes, too many for {len(transcript.prompt_ids)} "
                    f"prompt tokens (at most {limit})"]
        try:
            ids = prompting.prompt_ids(self.model, client)
        except RequestError as exc:
            return [f"prompt: the request gives no prompt with this model's template: {exc.summary()}"[:300]]
        if ids != list(transcript.prompt_ids):
            at = next((i for i, (a, b) in enumerate(zip(ids, transcript.prompt_ids, strict=False)) if a != b),
                      min(len(ids), len(transcript.prompt_ids)))
            out.append(f"prompt_ids: the request through the pinned tokenizer and chat template gives {len(ids)} "
                       f"tokens ({ids_digest(ids)}), the transcript has {len(transcript.prompt_ids)} "
                       f"({ids_digest(transcript.prompt_ids)}); first difference at position {at}")
        out += self._params_reasons(transcript, client, signed_defaults)
        logprobs_on, top_n, _ = prompting.logprob_options(client)
        tops = {len(t.top) for t in transcript.tokens}
        if tops - {min(top_n, self.model.vocab_size)}:
            out.append(f"tokens.top: the transcript has {sorted(tops)} alternatives per token, the request asks "
                       f"for {top_n}")
        return out

    def _body_reasons(self, req: VerifyRequest, client: Any, judgement: Judgement) -> list[str]:
        """The response body must be what an honest node sends for these output ids."""
        from ..engine.stops import cut_text
        from ..openai import prompting
        from ..openai.format import TokenText, chat_body, completion_body

        t = req.transcript
        response = {k: v for k, v in req.response.items() if k != "specguard"}
        out: list[str] = []
        for name, kind in (("id", str), ("created", int), ("model", str)):
            value = response.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                out.append(f"response.{name}: must be a {kind.__name__}, got {type(value).__name__}")
        if out:
            return out
        text = self.model.decode(list(t.output_ids))
        if t.params.stop and t.finish_reason == "stop":
            text = cut_text(text, t.params.stop)
        records = list(t.tokens)
        if len(judgement.positions) == len(records):  # the body's logprobs must be the re-derived ones
            records = [_rederived_record(rec, pos) for rec, pos in zip(records, judgement.positions, strict=True)]
        honest = dataclasses.replace(t, text=text, tokens=records)
        if self._text_of is None:
            self._text_of = TokenText(self.model)
        logprobs_on, top_n, completion_lp = prompting.logprob_options(client)
        if prompting.request_kind(client) == "chat":
            expected = chat_body(honest, response_id=response["id"], created=response["created"],
                                 model=response["model"], logprobs=logprobs_on, top_n=top_n, text_of=self._text_of)
        else:
            expected = completion_body(honest, response_id=response["id"], created=response["created"],
                                       model=response["model"], logprobs=completion_lp, text_of=self._text_of)
        tolerance = self.tolerances.for_engine(t.engine, t.model_file_digest).logprob_tolerance  # the profile's
        _diff(_drop_nulls(expected), _drop_nulls(response), "response", tolerance, out)
        return out


def _parse_client_request(obj: dict[str, Any]) -> Any:
    from ..openai.prompting import parse_request

    try:
        return parse_request(obj)
    except RequestError as exc:
        raise VerifyRequestError(exc.message, field=exc.field or "request", got=exc.got) from exc


def _prompt_bytes(client: Any) -> int:
    """UTF-8 bytes of the request's prompt text (messages or prompt), without tokenizing it."""
    messages = getattr(client, "messages", None)
    if messages is not None:
        return sum(len(m.text().encode("utf-8")) + len(m.role) for m in messages)
    prompt = client.prompt
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8"))
    if prompt and isinstance(prompt[0], str):
        return len(prompt[0].encode("utf-8"))
    return 0


def _rederived_record(rec: TokenRecord, pos: Any) -> TokenRecord:
    recomputed = dict(pos.top)
    return TokenRecord(position=rec.position, token_id=rec.token_id, logprob=float(pos.logprob),
                       top=[(alt, float(recomputed.get(alt, math.nan))) for alt, _ in rec.top])


def _drop_nulls(value: Any) -> Any:
    """`value` with null-valued object keys removed at every depth (SDK dumps add them)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _diff(expected: Any, got: Any, path: str, tolerance: float, out: list[str]) -> None:
    """Append to `out` where `got` differs from `expected` (floats within `tolerance`)."""
    if len(out) >= MAX_BODY_DIFFS:
        return
    if isinstance(expected, dict):
        _diff_object(expected, got, path, tolerance, out)
    elif isinstance(expected, list):
        _diff_list(expected, got, path, tolerance, out)
    elif isinstance(expected, float):
        ok = isinstance(got, int | float) and not isinstance(got, bool) and math.isfinite(expected) \
            and abs(float(got) - expected) <= tolerance
        if not ok:
            out.append(f"{path}: {got!r} is not the re-derived {round(expected, 6)} (tolerance {tolerance})")
    elif isinstance(expected, str):
        if got != expected:
            out.append(_string_difference(expected, got, path))
    elif got != expected or type(got) is not type(expected):
        out.append(f"{path}: {got!r}, expected {expected!r}")


def _diff_object(expected: dict[str, Any], got: Any, path: str, tolerance: float, out: list[str]) -> None:
    if not isinstance(got, dict):
        out.append(f"{path}: expected an object, got {type(got).__name__}")
        return
    for k in sorted(set(expected) | set(got), key=str):
        if k not in got:
            out.append(f"{path}.{k}: missing (an honest response has it)")
        elif k not in expected:
            out.append(f"{path}.{k}: not part of an honest response")
        else:
            _diff(expected[k], got[k], f"{path}.{k}", tolerance, out)


def _diff_list(expected: list[Any], got: Any, path: str, tolerance: float, out: list[str]) -> None:
    if not isinstance(got, list) or len(got) != len(expected):
        out.append(f"{path}: expected a list of {len(expected)}, got "
                   f"{len(got) if isinstance(got, list) else type(got).__name__}")
        return
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        _diff(e, g, f"{path}[{i}]", tolerance, out)


def _string_difference(expected: str, got: Any, path: str) -> str:
    if not isinstance(got, str):
        return f"{path}: expected a string, got {type(got).__name__}"
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    return (f"{path}: differs from the decoding of the output ids ({len(got)} chars, expected "
            f"{len(expected)}; first difference at char {at})")


__all__ = ["VerifierService", "VerifyRequest", "VerifyRequestError", "NodeNotAllowedError", "ACCEPT", "REJECT"]
