# The twistd dropins of compassd. Importing this file must stay cheap: twistd imports
# every dropin for --help, so each daemon's code is imported only when it is chosen.
from twisted.application.service import ServiceMaker

compass_tracker = ServiceMaker(
    "compass-tracker",
    "compassd.tracker.tap",
    "compassd's tracker: NPU board pools, fair queues and leases.",
    "compass-tracker",
)

compass_server = ServiceMaker(
    "compass-server",
    "compassd.server.tap",
    "compassd's board server: sessions that run models on the NPU or ONNX Runtime.",
    "compass-server",
)

compass_proxy = ServiceMaker(
    "compass-proxy",
    "compassd.proxy.tap",
    "compassd's proxy: fronts boards behind NAT and relays their clients' sessions.",
    "compass-proxy",
)
