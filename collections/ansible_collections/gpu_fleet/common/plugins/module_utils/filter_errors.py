"""One way for the collection's filters to report bad input: an AnsibleFilterError that names the
filter, instead of a Python traceback in the middle of a play."""

from __future__ import annotations

import functools

from ansible.errors import AnsibleFilterError

INPUT_ERRORS = (ValueError, KeyError, TypeError)


def reporting(function, name: str, errors: tuple = INPUT_ERRORS):
    """`function`, whose `errors` on bad input become AnsibleFilterError("<name>: <why>")."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except errors as error:
            raise AnsibleFilterError(f"{name}: {error}") from error

    return wrapped


def prefixed(prefix: str, functions, errors: tuple = INPUT_ERRORS) -> dict:
    """The filters named prefix + each function's name, each reporting bad input under that name."""
    return {
        f"{prefix}{function.__name__}": reporting(function, f"{prefix}{function.__name__}", errors)
        for function in functions
    }
