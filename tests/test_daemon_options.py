"""The options compass-server and compass-proxy share (compassd.daemon_options)."""

from __future__ import annotations

import pytest
from twisted.python import usage

from compassd.daemon_options import positive
from compassd.proxy.tap import Options as ProxyOptions
from compassd.server.tap import Options as ServerOptions


def test_positive_takes_numbers_above_zero_only() -> None:
    assert positive("0.5") == 0.5
    for bad in ("0", "-3", "nan"):
        with pytest.raises(ValueError, match="is not a positive number"):
            positive(bad)


@pytest.mark.parametrize("options, extra", [(ServerOptions, ["--key", "npu"]),
                                            (ProxyOptions, [])])
def test_tracker_becomes_an_endpoint_string_for_both_daemons(
    options: type[usage.Options], extra: list[str]
) -> None:
    parsed = options()
    parsed.parseOptions([*extra, "--tracker", "[fd00::7]:9300", "--advertise", "gw:9090"])
    assert parsed["tracker-endpoint"] == "tcp:host=fd00\\:\\:7:port=9300"
    parsed = options()
    parsed.parseOptions([*extra, "--tracker", "tls:host=t.lab:port=9190"])
    assert parsed["tracker-endpoint"] == "tls:host=t.lab:port=9190"
    parsed = options()
    parsed.parseOptions([*extra, "--tracker", "tcp:127.0.0.1:9190", "--advertise",
                         "tcp:gw.lab:9090"])
    assert parsed["tracker-endpoint"] == "tcp:127.0.0.1:9190"
    assert parsed["advertise"] == "gw.lab:9090"


@pytest.mark.parametrize("options, extra", [(ServerOptions, ["--key", "npu"]),
                                            (ProxyOptions, [])])
@pytest.mark.parametrize("flag, value, message", [
    ("--tracker", "[::1", "--tracker: '[::1' opens [ but does not close it."),
    ("--advertise", "gw:0", "--advertise: 'gw:0' is not HOST:PORT."),
    ("--tracker", "tcp:127.0.0.1", "--tracker: 'tcp:127.0.0.1' is not a client endpoint"
     " string that can work:"),
    ("--advertise", "unix:/run/gw.sock", "--advertise: 'unix:/run/gw.sock' is a unix:"
     " endpoint, but clients dial this address over TCP: give HOST:PORT."),
])
def test_a_bad_address_is_a_usage_error_naming_the_option(
    options: type[usage.Options], extra: list[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(usage.UsageError) as e:
        options().parseOptions([*extra, flag, value])
    assert str(e.value).startswith(message)


def test_the_boards_proxy_option_is_read_as_an_endpoint_too() -> None:
    parsed = ServerOptions()
    parsed.parseOptions(["--key", "npu", "--proxy", "gw.lab:9090"])
    assert parsed["proxy"] == "tcp:host=gw.lab:port=9090"
    with pytest.raises(usage.UsageError, match="^--proxy: 'gw.lab:0' is not HOST:PORT"):
        ServerOptions().parseOptions(["--key", "npu", "--proxy", "gw.lab:0"])


def test_the_boards_proxy_option_takes_the_positional_endpoint_form() -> None:
    parsed = ServerOptions()
    parsed.parseOptions(["--key", "npu", "--proxy", "tcp:gw.lab:9090"])
    assert parsed["proxy"] == "tcp:gw.lab:9090"
    with pytest.raises(usage.UsageError, match="^--proxy: 'tcp:gw.lab' is not a client"):
        ServerOptions().parseOptions(["--key", "npu", "--proxy", "tcp:gw.lab"])


def test_a_board_takes_a_standby_pair_and_the_proxy_refuses_one() -> None:
    parsed = ServerOptions()
    parsed.parseOptions(["--key", "npu", "--tracker", "a.lab:9190, tls:host=b.lab:port=9190"])
    assert parsed["tracker-endpoint"] == "tcp:host=a.lab:port=9190,tls:host=b.lab:port=9190"
    with pytest.raises(usage.UsageError, match="--tracker: 'a.lab:9190,' is not a tracker"):
        ServerOptions().parseOptions(["--key", "npu", "--tracker", "a.lab:9190,"])
    with pytest.raises(usage.UsageError, match="registers with one tracker"):
        ProxyOptions().parseOptions(["--tracker", "a.lab:9190,b.lab:9190"])
