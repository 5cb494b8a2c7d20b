"""The Event Grid receiver (and later the dashboard and metrics): an ASGI app."""

from certlc.webhook.receiver import AcceptedEvent, EventSink, create_app

__all__ = ["AcceptedEvent", "EventSink", "create_app"]
