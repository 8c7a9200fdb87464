"""compass-tracker: device pools, fair queues, leases (the scheduling core in
C{scheduler} and C{fairqueue}, the Twisted shell in C{service}, the twistd options in
C{tap})."""
