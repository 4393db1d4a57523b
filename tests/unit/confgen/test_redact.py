"""confgen.redact: MD5 keys masked in configs and in text derived from them."""

from __future__ import annotations

import pytest

from confgen.redact import REDACTED, config_secrets, redact_config, redact_values

CONFIG = (
    "neighbor 10.0.0.12 {\n"
    '    description "Node_10_0_0_12";\n'
    '    md5-password "czNjcmV0";\n'
    "    md5-base64 true;\n"
    "}\n"
    "neighbor 10.0.0.13 {\n"
    '    md5-password "b3RoZXI=";\n'
    "}\n"
)


def test_every_key_is_masked_and_nothing_else_changes():
    masked = redact_config(CONFIG)
    assert masked == CONFIG.replace("czNjcmV0", REDACTED).replace("b3RoZXI=", REDACTED)
    assert config_secrets(CONFIG) == {"czNjcmV0", "b3RoZXI="}
    assert config_secrets(masked) == {REDACTED}
    assert redact_config(masked) == masked


@pytest.mark.parametrize(
    "text, expected",
    [
        ('md5-password "";', 'md5-password "<redacted>";'),  # an empty one is still not shown as a value
        ('  md5-password   "a b";', '  md5-password   "<redacted>";'),
        ('xmd5-password "k";', 'xmd5-password "k";'),  # not the keyword
        ('description "md5-password";', 'description "md5-password";'),
        ('md5-password "k"; md5-password "l";', 'md5-password "<redacted>"; md5-password "<redacted>";'),
    ],
)
def test_redact_config_lines(text, expected):
    assert redact_config(text) == expected


def test_values_are_replaced_wherever_they_appear_longest_first():
    secrets = {"abc", "abcdef", ""}
    masked = redact_values("token abcdef then abc then ab", secrets)
    assert masked == f"token {REDACTED} then {REDACTED} then ab"
    assert redact_values("nothing here", set()) == "nothing here"
