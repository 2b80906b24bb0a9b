"""The supervisor's one error hierarchy.

Every failure the daemon reports to a client is a :class:`SupervisorError`; the single error
middleware in ``supervisor.app`` turns it into a problem body with the reference's
``{"status": "error", "result": <message>}`` keys plus ``type``, ``detail`` and ``field``::

    SupervisorError (500)
    ├── BadRequest (400)            malformed body, unexpected upload field, unsafe name
    ├── Unauthorized (401)          missing/wrong bearer token on a control route
    ├── NotFound (404)              unknown deployment, module, function, entry or file
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── Unprocessable (422)         well-formed but invalid: schema, digest mismatch, bad wasm
    ├── FetchFailed (502)           a module or data file could not be downloaded
    ├── Unavailable (503)           shutting down
    └── GuestError (-)              a Wasm call failed; recorded in history, never a 5xx
        kinds: timeout, out_of_fuel, memory_limit, trap, exit, link, abi, output
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error the supervisor reports; ``status`` is the HTTP status it maps to."""

    status = 500
    type = "internal"

    def __init__(
        self, message: str, *, field: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail


class BadRequest(SupervisorError):
    status = 400
    type = "bad-request"


class Unauthorized(SupervisorError):
    status = 401
    type = "unauthorized"


class NotFound(SupervisorError):
    status = 404
    type = "not-found"


class Conflict(SupervisorError):
    status = 409
    type = "conflict"


class PayloadTooLarge(SupervisorError):
    status = 413
    type = "payload-too-large"


class Unprocessable(SupervisorError):
    status = 422
    type = "unprocessable"


class Unavailable(SupervisorError):
    status = 503
    type = "unavailable"


class FetchFailed(SupervisorError):
    status = 502
    type = "fetch-failed"


class GuestError(SupervisorError):
    """A Wasm function failed: timeout, fuel, memory cap, trap, non-zero exit, link, ABI, or
    output (a missing or oversized output file, an oversized result)."""

    status = 500
    type = "guest-error"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
