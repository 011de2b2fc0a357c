"""The one exception hierarchy of postoffice.

Every error a client can cause carries its AMQP reply code and its scope: a
:class:`SoftError` closes the channel it happened on, a :class:`HardError` closes the
whole connection (AMQP 0-9-1 section 1.2, "soft-error" and "hard-error").  They are
raised where a rule is broken (codec, core) and turned into ``channel.close`` or
``connection.close`` frames in exactly one place, the server's connection.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AMQPError",
    "AMQPNotImplemented",
    "AMQPSyntaxError",
    "AccessRefused",
    "ChannelError",
    "CommandInvalid",
    "ConnectionForced",
    "ContentTooLarge",
    "FrameError",
    "HardError",
    "InternalError",
    "InvalidPath",
    "NotAllowed",
    "NotFound",
    "PreconditionFailed",
    "ResourceError",
    "ResourceLocked",
    "SoftError",
    "UnexpectedFrame",
]


class AMQPError(Exception):
    """An error with an AMQP reply code.

    ``text`` is the human part; :attr:`reply_text` is what goes on the wire, in
    RabbitMQ's form ``"NOT_FOUND - no queue 'q' in vhost '/'"``.  ``class_id`` and
    ``method_id`` name the method that failed; the server fills them in when the
    raiser did not know them.
    """

    reply_code: ClassVar[int] = 541
    name: ClassVar[str] = "INTERNAL_ERROR"
    closes_connection: ClassVar[bool] = True

    def __init__(self, text: str = "", class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        text = f"{self.name} - {self.text}" if self.text else self.name
        # reply-text is a shortstr: at most 255 bytes once encoded.
        encoded = text.encode("utf-8")[:255]
        return encoded.decode("utf-8", "ignore")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reply_code}, {self.text!r})"


class SoftError(AMQPError):
    """Closes the channel on which it happened; the connection lives on."""

    closes_connection = False


class HardError(AMQPError):
    """Closes the whole connection."""

    closes_connection = True


class ContentTooLarge(SoftError):
    reply_code = 311
    name = "CONTENT_TOO_LARGE"


class AccessRefused(SoftError):
    reply_code = 403
    name = "ACCESS_REFUSED"


class NotFound(SoftError):
    reply_code = 404
    name = "NOT_FOUND"


class ResourceLocked(SoftError):
    reply_code = 405
    name = "RESOURCE_LOCKED"


class PreconditionFailed(SoftError):
    reply_code = 406
    name = "PRECONDITION_FAILED"


class ConnectionForced(HardError):
    reply_code = 320
    name = "CONNECTION_FORCED"


class InvalidPath(HardError):
    reply_code = 402
    name = "INVALID_PATH"


class FrameError(HardError):
    reply_code = 501
    name = "FRAME_ERROR"


class AMQPSyntaxError(HardError):
    reply_code = 502
    name = "SYNTAX_ERROR"


class CommandInvalid(HardError):
    reply_code = 503
    name = "COMMAND_INVALID"


class ChannelError(HardError):
    reply_code = 504
    name = "CHANNEL_ERROR"


class UnexpectedFrame(HardError):
    reply_code = 505
    name = "UNEXPECTED_FRAME"


class ResourceError(HardError):
    reply_code = 506
    name = "RESOURCE_ERROR"


class NotAllowed(HardError):
    reply_code = 530
    name = "NOT_ALLOWED"


class AMQPNotImplemented(HardError):
    reply_code = 540
    name = "NOT_IMPLEMENTED"


class InternalError(HardError):
    reply_code = 541
    name = "INTERNAL_ERROR"
