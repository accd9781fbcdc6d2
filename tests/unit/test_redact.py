"""Redaction by value, in every form a secret is printed in; short secrets only as whole tokens."""

import html
import json
import urllib.parse

import pytest

from umc_infra.secrets.redact import MIN_SUBSTRING, Redactor


@pytest.mark.parametrize(
    "shown",
    [
        lambda v: v,
        lambda v: json.dumps(v),
        lambda v: json.dumps({"password": v}),
        lambda v: repr(v),
        lambda v: repr({"password": v}),
        lambda v: html.escape(v),
        lambda v: urllib.parse.quote(v, safe=""),
        lambda v: f"error: bad value {v!r} for password",
    ],
    ids=["verbatim", "json", "json-object", "repr", "repr-dict", "html", "url", "message"],
)
@pytest.mark.parametrize(
    "secret", ['pa"ss\\word-1', "it's-a-secret", "wachtwoord-é-ü-\u202e", "<tag>&amp;-secret", "tab\there-secret"]
)
def test_a_secret_is_hidden_in_every_form(secret, shown):
    text = f"before {shown(secret)} after"
    redacted = Redactor([secret])(text)
    forms = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], html.escape(secret), urllib.parse.quote(secret)}
    assert not [form for form in forms if form in redacted], redacted
    # The control: the forms really differ from the value, and a plain replace would miss them.
    if shown(secret) != secret and secret not in shown(secret):
        assert text.replace(secret, "***") == text
    assert redacted.startswith("before ") and redacted.endswith(" after")


@pytest.mark.parametrize("short", ["true", "umc", "1234", "tf"])
def test_a_short_secret_is_hidden_only_as_a_whole_token(short):
    assert len(short) < MIN_SUBSTRING
    redactor = Redactor([short])
    assert redactor(f"the value is {short}.") == "the value is ***."
    assert redactor(f'{{"a": {short}}}') == '{"a": ***}'
    inside = f"/dev/shm/x{short}y/{short}ness"
    assert redactor(inside) == inside  # inside other words: ordinary text stays readable
    assert not redactor.in_argv(["/usr/bin/terraform", f"-out=/dev/shm/{short}-run/plan", "-json"])
    assert redactor.in_argv(["tool", short])  # the secret as a whole argument is refused


def test_a_long_secret_in_an_argument_is_refused_and_json_output_survives_redaction_when_parsed_first():
    redactor = Redactor(["hunter2-canary"])
    assert redactor.in_argv(["tool", "--password=hunter2-canary"])
    assert redactor.in_argv(["tool", json.dumps({"p": "hunter2-canary"})])
    output = json.dumps({"x": {"sensitive": True, "value": "v"}})
    assert json.loads(output)["x"]["sensitive"] is True  # what Terraform's output -json is parsed from
    with pytest.raises(ValueError):
        json.loads(Redactor(["true"])(output))  # the control: redacting first would corrupt it


def test_multiline_values_and_empty_ones():
    key = "-----BEGIN KEY-----\nAAAAsecretline1\nBBBBsecretline2\n-----END KEY-----"
    redactor = Redactor([key, "", "   "])
    assert redactor("got BBBBsecretline2 here") == "got *** here"
    assert redactor(json.dumps(key)) == '"***"'
    assert len(redactor) == 1
