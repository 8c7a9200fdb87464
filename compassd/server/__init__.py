"""compass-server: one board (one device key) lent to one session at a time.

- :mod:`compassd.server.sessiondir`: a session's private directory, and the rule that no
  client path ever leaves it.
- :mod:`compassd.server.upload`: files streamed into that directory (size limit, SHA-256
  checked, stored atomically) and out of it again.
"""
