"""Pickling for the `pickle` runtime: functions, call arguments, results and function names.

A call's payload is base64 of a pickled `(args, kwargs)` pair; a result is base64 of the pickled
return value (or of the exception the function raised). Functions are pickled with dill
(`recurse=True`, so a function defined in `__main__` or nested in another travels with just the
globals it uses); arguments with the standard pickler when that is enough, dill otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import pickle
import re
from typing import Any, Callable, Dict, Tuple

import dill

from .errors import PicklingError, UnpicklingError


def describe(fn: Any) -> str:
    """A short name for `fn` in messages: its qualified name, or its repr."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return repr(name) if name else repr(fn)


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """The dill pickle of `fn`; raises `PicklingError` naming the function when it cannot be."""
    if not callable(fn):
        raise PicklingError("%r is not callable: pass a function" % (fn,))
    try:
        return dill.dumps(fn, recurse=True)
    except Exception as exc:
        raise PicklingError(
            "cannot pickle function %s to send it to faasd: %s: %s (a function that uses a "
            "socket, a generator or an open resource cannot leave this process)"
            % (describe(fn), type(exc).__name__, exc)
        ) from exc


def dumps_call(fn: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
    """The payload of a call: base64 of the pickled `(args, kwargs)`, as text.

    The standard pickler is tried first (it is much faster); a pickle that names anything in
    `__main__`, which the server cannot import, is redone with dill, which pickles it by value.
    """
    try:
        data = pickle.dumps((args, kwargs), protocol=pickle.DEFAULT_PROTOCOL)
        if b"__main__" in data:
            data = dill.dumps((args, kwargs), recurse=True)
    except Exception:
        try:
            data = dill.dumps((args, kwargs), recurse=True)
        except Exception as exc:
            raise PicklingError(
                "cannot pickle the arguments of %s to send them to faasd: %s: %s"
                % (describe(fn), type(exc).__name__, exc)
            ) from exc
    return base64.b64encode(data).decode("ascii")


def loads_result(data: bytes, task_id: str) -> Any:
    """The value of a pickle task's result bytes (base64 text of a dill pickle)."""
    try:
        return dill.loads(base64.b64decode(data))
    except Exception as exc:
        raise UnpicklingError(
            "cannot unpickle the result of task %s here: %s: %s" % (task_id, type(exc).__name__, exc)
        ) from exc


_INVALID = re.compile(r"[^a-z0-9_-]+")


def function_name(fn: Any, digest: str) -> str:
    """A valid function name for `fn`: its name made valid, then `-` and 12 hex digits of
    `digest` (`[a-z0-9][a-z0-9_-]{0,62}`).

    >>> function_name(lambda: 0, "ab" * 32)
    'lambda-abababababab'
    """
    base = getattr(fn, "__name__", None) or type(fn).__name__
    base = _INVALID.sub("_", str(base).lower()).strip("_-")[:50] or "fn"
    return "%s-%s" % (base, digest[:12])


def sha256_hex(*parts: bytes) -> str:
    """The hex SHA-256 of the concatenated `parts`."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()
