"""The content checks of `verify_receipt`: what the client sent and received against what is signed.

Each returns its layer entry ({"layer", "status", "detail"}) or raises the layer's error.
"""

from __future__ import annotations

from typing import Any

from ...canonical import CanonicalizationError
from ...transcript import TokenRecord, Transcript, ids_digest
from ..disclosure import token_records_root
from ..options import VerifyOptions
from ..request_defaults import DEFAULTS_KEY, ExpectedDefaults, RequestDefaults, check_params
from .errors import RequestDigestError, ResponseTextError, SubjectDigestError, TokenRootError
from .wire import (
    RESPONSE_DIGEST_KEY,
    RESPONSE_DIGEST_V1,
    RESPONSE_EXCLUDED_KEY,
    request_digest,
    response_digest,
)

#: the finish reason a client body shows for each signed one; anything else is never honest
BODY_FINISH_REASON = {"stop": "stop", "length": "length"}


def check_response(response: Any, statement: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    """Subject digest against the response the client received (minus its "specguard" key)."""
    if response is None:
        return {"layer": "response", "status": "unchecked", "detail": "no response given"}
    subject = statement["subject"][0]["digest"]["sha256"]
    version = statement["predicate"].get(RESPONSE_DIGEST_KEY, RESPONSE_DIGEST_V1)
    got = response_digest(dict(response) if not isinstance(response, dict) else response, version, secret)
    if got != subject:
        raise SubjectDigestError("response does not match the signed subject digest",
                                 field="statement.subject[0].digest.sha256", got=got, expected=subject)
    return {"layer": "response", "status": "ok", "detail": f"response digest ({version}) matches the subject"}


def check_request(request: Any, predicate: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    """The signed request digest against the canonical request object the user gives."""
    got = request_digest(request, secret)
    if got != predicate["request_digest"]:
        raise RequestDigestError("request is not the one the receipt signs (prompt or parameters differ)",
                                 field="predicate.request_digest", got=got, expected=predicate["request_digest"])
    return {"layer": "request", "status": "ok", "detail": "request digest matches the signed one"}



def _prompt_ids(options: VerifyOptions) -> list[int] | None:
    if options.prompt_ids is not None:
        return list(options.prompt_ids)
    sg = options.response.get(RESPONSE_EXCLUDED_KEY) if isinstance(options.response, dict) else None
    ids = sg.get("prompt_ids") if isinstance(sg, dict) else None
    return ids if isinstance(ids, list) else None


def check_signed_params(options: VerifyOptions, predicate: dict[str, Any]) -> dict[str, Any]:
    """The signed parameters are what the request resolves to (attest/request_defaults.py), under the
    node's signed defaults and the defaults the user expects (`options.expected_defaults`)."""
    ids = _prompt_ids(options)
    if ids is not None:
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids):
            raise RequestDigestError("prompt ids must be non-negative integers", field="specguard.prompt_ids")
        if ids_digest(ids) != predicate["prompt_ids_digest"]:
            where = "the request through the model's tokenizer and template" if options.prompt_ids is not None \
                else "the response's specguard.prompt_ids"
            raise RequestDigestError(f"{where} gives other prompt ids than the receipt signs",
                                     field="predicate.prompt_ids_digest", got=ids_digest(ids),
                                     expected=predicate["prompt_ids_digest"])
    signed = RequestDefaults.from_json(predicate[DEFAULTS_KEY]) if DEFAULTS_KEY in predicate else None
    expected = options.expected_defaults or ExpectedDefaults()
    detail = check_params(predicate["params"], dict(options.request), None if ids is None else len(ids), signed,
                          expected)
    return {"layer": "params", "status": "ok", "detail": detail}


def _output_ids(response: Any, tokens: Any) -> list[int] | None:
    sg = response.get(RESPONSE_EXCLUDED_KEY) if isinstance(response, dict) else None
    if isinstance(sg, dict) and isinstance(sg.get("output_ids"), list):
        return sg["output_ids"]
    if isinstance(tokens, list) and all(isinstance(t, dict) and "token_id" in t for t in tokens):
        return [t["token_id"] for t in tokens]
    return None


def check_text(options: VerifyOptions, predicate: dict[str, Any], tokens: Any) -> dict[str, Any]:
    """decode(signed output ids), stop strings trimmed, must be the body's text; finish reason honest."""
    decoder, response = options.decoder, options.response
    if not isinstance(response, dict):
        raise ResponseTextError("checking the response text needs the response (--response)", field="response")
    signed_tok = predicate["model"].get("tokenizer_digest")
    if decoder.tokenizer_digest != signed_tok:
        raise ResponseTextError("the given model's tokenizer is not the one the receipt signs",
                                field="predicate.model.tokenizer_digest", got=decoder.tokenizer_digest,
                                expected=signed_tok)
    ids = _output_ids(response, tokens)
    if ids is None:
        raise ResponseTextError("no output ids to decode: the response has no specguard.output_ids and no "
                                "token records were given", field="specguard.output_ids")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids):
        raise ResponseTextError("output ids must be non-negative integers", field="specguard.output_ids")
    if ids_digest(ids) != predicate["output_ids_digest"]:
        raise TokenRootError("output ids do not match the signed output ids digest",
                             field="predicate.output_ids_digest", got=ids_digest(ids),
                             expected=predicate["output_ids_digest"])
    choices = response.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise ResponseTextError("response must have exactly one choice", field="choices",
                                got=len(choices) if isinstance(choices, list) else type(choices).__name__)
    choice = choices[0]
    message = choice.get("message")
    body_text = message.get("content") if isinstance(message, dict) else choice.get("text")
    expected = decoder.decode(list(ids))
    stops = predicate["params"].get("stop") or []
    if predicate["finish_reason"] == "stop" and stops:
        cut = min((expected.find(s) for s in stops if isinstance(s, str) and s and s in expected), default=-1)
        expected = expected if cut < 0 else expected[:cut]
    if body_text != expected:
        raise ResponseTextError("response text is not the decoding of the signed output ids",
                                field="choices[0].text" if message is None else "choices[0].message.content",
                                got=body_text if not isinstance(body_text, str) else body_text[:200],
                                expected=expected[:200])
    honest = BODY_FINISH_REASON.get(predicate["finish_reason"])
    if honest is None or choice.get("finish_reason") != honest:
        raise ResponseTextError("response finish reason is not the signed one", field="choices[0].finish_reason",
                                got=choice.get("finish_reason"),
                                expected=honest or f"a finished generation (signed: {predicate['finish_reason']})")
    return {"layer": "response_text", "status": "ok",
            "detail": f"text is the decoding of {len(ids)} signed output ids; finish reason {honest}"}



def tokens_from(response: Any, options: VerifyOptions) -> Any:
    """Token records to check against the signed root: options.tokens (records or a Transcript),
    else response["specguard"]["transcript"]["tokens"] or response["specguard"]["tokens"]."""
    src = options.tokens
    if isinstance(src, Transcript):
        return [t.to_json() for t in src.tokens]
    if src is not None:
        return list(src)
    if isinstance(response, dict) and isinstance(response.get(RESPONSE_EXCLUDED_KEY), dict):
        sg = response[RESPONSE_EXCLUDED_KEY]
        if isinstance(sg.get("transcript"), dict) and "tokens" in sg["transcript"]:
            return sg["transcript"]["tokens"]
        if "tokens" in sg:
            return sg["tokens"]
    return None


def check_tokens(tokens: Any, predicate: dict[str, Any]) -> dict[str, Any]:
    """Token records against the signed token-records root and output ids digest."""
    if not isinstance(tokens, list):
        raise TokenRootError("token records must be a list", field="tokens", got=type(tokens).__name__)
    records: list[TokenRecord] = []
    for i, t in enumerate(tokens):
        ok = isinstance(t, dict) and all(k in t for k in ("position", "token_id", "logprob"))
        ok = ok and all(isinstance(t[k], int) and not isinstance(t[k], bool) for k in ("position", "token_id"))
        ok = ok and isinstance(t["logprob"], int | float) and not isinstance(t["logprob"], bool)
        if not ok:
            raise TokenRootError("token record needs integer position/token_id and numeric logprob",
                                 field=f"tokens[{i}]", got=t)
        records.append(TokenRecord(position=t["position"], token_id=t["token_id"], logprob=float(t["logprob"])))
    try:
        root = token_records_root(records)
    except CanonicalizationError as exc:
        raise TokenRootError("token record is not canonicalizable", field="tokens", got=exc.message) from exc
    if root != predicate["token_records_root"]:
        raise TokenRootError("token records do not match the signed root", field="predicate.token_records_root",
                             got=root, expected=predicate["token_records_root"])
    ids = ids_digest([r.token_id for r in records])
    if ids != predicate["output_ids_digest"]:
        raise TokenRootError("token ids do not match the signed output ids digest",
                             field="predicate.output_ids_digest", got=ids, expected=predicate["output_ids_digest"])
    return {"layer": "token_records", "status": "ok", "detail": f"{len(records)} token records match the root"}

