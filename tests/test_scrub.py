"""Secrets scrubbed from error text: configured values and credential-looking headers, whatever their form."""

from hoi_factory.config import Settings
from hoi_factory.scrub import REDACTED, scrub


def test_configured_secrets_and_credential_headers_are_scrubbed():
    settings = Settings(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="wJalr/secret+value",
                        llm_api_key="sk-live-abcdef")
    text = ("401 {'error': 'Authorization: Bearer sk-live-abcdef rejected'} key=AKIAEXAMPLE "
            "secret wJalr/secret+value, headers {\"x-api-key\": \"other-token-123\"} basic dXNlcjpwYXNzd29yZA==")
    clean = scrub(text, settings.secrets())
    for secret in ("sk-live-abcdef", "AKIAEXAMPLE", "wJalr/secret+value", "other-token-123", "dXNlcjpwYXNzd29yZA=="):
        assert secret not in clean
    assert clean.count(REDACTED) >= 5 and clean.startswith("401 {'error': 'Authorization: ")


def test_text_without_secrets_is_unchanged():
    text = "KeyError: 'pixels' in stage ReadImage (file /data/a.png, 3 bytes)"
    assert scrub(text, ["unrelated-secret"]) == text and scrub("", []) == ""
