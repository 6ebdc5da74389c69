"""Text fields as clients send them: trimmed of surrounding blanks, never blank.

The published JSON Schema and the validation must agree on every string, and regex
engines disagree about what `\\s` is (Python counts \\x1c-\\x1f, ECMAScript \\ufeff). So
"blank" here is one explicit set, used both to trim and in the schema's patterns, and a
length limit applies to the text as sent (what a schema's `maxLength` can say).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

# Every character some regex engine calls whitespace.
BLANKS = (
    "\t\n\v\f\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
BLANK_CLASS = r"\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# "Not only blanks", for the schema (the validator below enforces it).
NOT_BLANK = Field(json_schema_extra={"pattern": f"[^{BLANK_CLASS}]"})


def trim(value: str) -> str:
    """`value` without surrounding blanks; a blank value is refused."""
    trimmed = value.strip(BLANKS)
    if not trimmed:
        raise ValueError("must not be blank")
    return trimmed


TRIMMED = AfterValidator(trim)

# At most N characters as sent, trimmed, not blank.
ShortText = Annotated[str, Field(max_length=300), TRIMMED, NOT_BLANK]
Name = Annotated[str, Field(max_length=100), TRIMMED, NOT_BLANK]
Prompt = Annotated[str, Field(max_length=4000), TRIMMED, NOT_BLANK]
LongText = Annotated[str, Field(max_length=50_000), TRIMMED, NOT_BLANK]
