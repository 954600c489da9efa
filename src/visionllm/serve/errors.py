"""The one error type of the serving layer: a client mistake, with its HTTP status."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses, and why.

    Attributes:
        status: the HTTP status (4xx for what the client sent, 503 when the server is full).
        message: what was wrong and what to send instead.
        param: the request field at fault, when there is one.
        code: a short machine-readable code (OpenAI's error `code`).
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        # A message may quote what the client sent: characters that cannot be sent as UTF-8 are escaped.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def to_json(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
