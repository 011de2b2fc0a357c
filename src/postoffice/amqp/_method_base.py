"""The base class of every generated AMQP method class (see ``_spec.py``)."""

from __future__ import annotations

from typing import ClassVar


class Method:
    """An AMQP 0-9-1 method: its arguments are the instance's fields.

    Subclasses are frozen, slotted dataclasses generated from the spec; the class
    variables below describe the method on the wire.  ``FIELDS`` lists the arguments
    in wire order as ``(python_name, amqp_type)``, which is all the generic codec in
    :mod:`postoffice.amqp.methods` needs.
    """

    __slots__ = ()

    CLASS_ID: ClassVar[int]
    METHOD_ID: ClassVar[int]
    INDEX: ClassVar[int]
    """``(CLASS_ID << 16) | METHOD_ID``, the key of :data:`METHODS`."""
    NAME: ClassVar[str]
    """The spec's name, e.g. ``"queue.declare"``."""
    SYNCHRONOUS: ClassVar[bool]
    """The spec marks the method as expecting a reply."""
    HAS_CONTENT: ClassVar[bool]
    """A content header and body frames follow the method frame."""
    FIELDS: ClassVar[tuple[tuple[str, str], ...]]
