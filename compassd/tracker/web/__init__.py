"""compass-tracker's web dashboard (C{--http ENDPOINT}): boards, queues and history,
live in a browser, with admin actions. See L{compassd.tracker.web.site}."""

from .site import Dashboard

__all__ = ["Dashboard"]
