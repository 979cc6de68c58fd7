"""Exceptions raised for bad user input to ``quantomni compare``.

All are ``ValueError`` subclasses so a CLI can catch one type and print the message.
"""


class CompareInputError(ValueError):
    """Bad candidate, case file, prompt file, seed list, flag value or weights path."""


class ImageMismatchError(ValueError):
    """Baseline and candidate images cannot be compared (size, mode, count)."""


class GateSyntaxError(ValueError):
    """A ``--gate`` expression that cannot be parsed or names an unknown metric."""


class PolicyError(ValueError):
    """A sensitivity/policy file that does not follow the documented schema."""
