"""The asyncio shell around the broker: listeners, connections, channels."""

from .listener import Server, new_event_loop, run

__all__ = ["Server", "new_event_loop", "run"]
