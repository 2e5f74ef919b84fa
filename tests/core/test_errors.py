"""specguard.errors: every error names the field, what was found and what was expected."""

from __future__ import annotations

from specguard.errors import ParseError, SpecguardError, ValidationError, VerificationError


def test_errors_name_field_got_expected():
    e = VerificationError("signature does not verify", field="signature", got="ab", expected="cd")
    assert "field=signature" in str(e) and "got=ab" in str(e) and "expected=cd" in str(e)
    assert e.to_dict()["exit_code"] == 4 and "expected: cd" in e.diagnostics()
    p = ParseError("too short", field="header", offset=0x30)
    assert "0x30" in str(p) and p.exit_code == 3
    v = ValidationError("policy failed", failures=[SpecguardError("a", field="x"), SpecguardError("b", field="y")])
    assert v.exit_code == 5 and "field=x" in v.diagnostics() and len(v.to_dict()["failures"]) == 2
