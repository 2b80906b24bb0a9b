"""The orchestrator's one error hierarchy; the problem middleware maps it to HTTP.

::

    OrchestratorError (500)
    ├── BadRequest (400)       malformed body or argument
    ├── Unauthorized (401)     missing/wrong bearer token on a mutating route
    ├── NotFound (404)         unknown device, module, deployment or execution
    ├── Conflict (409)         stale If-Match revision, immutable field changed
    ├── PayloadTooLarge (413)
    ├── Unprocessable (422)    invalid manifest or module, infeasible placement
    ├── DeviceError (502)      a device refused or did not answer
    │   └── DeviceUnavailable  it did not answer at all (refused connection, reset, timeout)
    └── Timeout (504)          a wait reached its deadline
"""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    status = 500
    type = "internal"

    def __init__(self, message: str, *, field: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail


class BadRequest(OrchestratorError):
    status = 400
    type = "bad-request"


class Unauthorized(OrchestratorError):
    status = 401
    type = "unauthorized"


class NotFound(OrchestratorError):
    status = 404
    type = "not-found"


class Conflict(OrchestratorError):
    status = 409
    type = "conflict"


class PayloadTooLarge(OrchestratorError):
    status = 413
    type = "payload-too-large"


class Unprocessable(OrchestratorError):
    status = 422
    type = "unprocessable"


class DeviceError(OrchestratorError):
    status = 502
    type = "device-error"


class DeviceUnavailable(DeviceError):
    """No answer at all: the device may be restarting, so the same call may work later."""


class Timeout(OrchestratorError):
    status = 504
    type = "timeout"
