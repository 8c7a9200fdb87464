"""A lease is true on both ends: what the tracker does with what a board says it serves.

A board that reconciles (it registers with C{reports}) tells the tracker, on every
registration and heartbeat, which session each of its devices serves: a
L{SessionReport} (lease id, holder, seconds left), or none. L{decide} compares that with
the tracker's view of the device and returns what to do, as L{Verdict}s that
L{compassd.tracker.scheduler.Scheduler.reconcile} carries out:

============================  ===================  =====================================
the tracker's view            the board serves     verdict
============================  ===================  =====================================
lease L (suspended or not)    L                    CONTINUE (a suspended L resumes)
lease L, session opened       nothing              GONE: L ends ("the board has no
                                                   session"), the holder is told
lease L, ticket not yet used  nothing              NOTHING (its client is on its way)
nothing, or an unopened L     M, of an earlier     ADOPT M as busy until its deadline
                              tracker              (an unopened L ends first)
anything                      M this tracker       REVOKE M: the board must end it; the
                              ended (or another    device is not free until it confirms
                              device's lease)
waiting for the board to end  nothing, or not E    CONFIRMED: the device may be free
lease E
waiting for E                 E                    REVOKE again
============================  ===================  =====================================

Which tracker issued a lease is in its id: every tracker start has its own epoch and
lease ids are C{lease-EPOCH.N} (L{lease_epoch}), so an id of this epoch that is not
active is one this tracker ended, and any other unknown id comes from before a restart
(a tracker with a store brings its leases back first: those are known).

Pure: no I/O and no clock; the scheduler passes everything in.
"""

from __future__ import annotations

from enum import StrEnum

import attrs

from .records import Device, Lease


@attrs.frozen
class SessionReport:
    """What a board says a device serves: lease C{lease} of C{holder}, C{expires_in}
    seconds left by the board's clock."""

    lease: str
    holder: str
    expires_in: float


class _Adopted:
    """The owner of an adopted lease: no connection of this tracker (its holder's client
    talks to the board, and may release the lease from any connection as that user)."""

    def __repr__(self) -> str:
        return "<adopted>"


ADOPTED = _Adopted()


class Verdict(StrEnum):
    NOTHING = "nothing"
    CONTINUE = "continue"
    GONE = "gone"
    ADOPT = "adopt"
    REVOKE = "revoke"
    CONFIRMED = "confirmed"
    DISPLACE = "displace"
    """End the tracker's own unopened lease on the device to make room for an adopted one."""


def lease_epoch(lease_id: str) -> str | None:
    """The epoch of a lease id C{lease-EPOCH.N}, or None for an id of another form."""
    kind, dash, rest = lease_id.partition("-")
    epoch, dot, number = rest.rpartition(".")
    if kind == "lease" and dash and dot and epoch and number.isdigit():
        return epoch
    return None


def decide(device: Device, report: SessionReport | None, known: Lease | None,
           epoch: str) -> list[Verdict]:
    """What to do about C{device}, whose board reports C{report}.

    C{known} is the tracker's active lease with the reported id (on any device), if any;
    C{epoch} is this tracker's.
    """
    verdicts: list[Verdict] = []
    current = device.lease
    ending = device.ending
    if report is None:
        if ending is not None:
            verdicts.append(Verdict.CONFIRMED)
        if current is not None and current.redeemed:
            verdicts.append(Verdict.GONE)
        return verdicts or [Verdict.NOTHING]
    if ending is not None and report.lease == ending:
        # still the lease the tracker asked it to end (a report sent before the revoke
        # arrived): never adopted again, even one of an earlier tracker
        if current is not None and current.redeemed and current.id != report.lease:
            verdicts.append(Verdict.GONE)
        return [*verdicts, Verdict.REVOKE]
    if ending is not None:
        verdicts.append(Verdict.CONFIRMED)
    if known is not None and known.device is device:
        return [*verdicts, Verdict.CONTINUE]
    if current is not None and current.redeemed:
        # the tracker's own session is gone from the board, which serves another one
        verdicts.append(Verdict.GONE)
    if known is None and lease_epoch(report.lease) != epoch:
        if current is not None and not current.redeemed:
            verdicts.append(Verdict.DISPLACE)
        return [*verdicts, Verdict.ADOPT]
    return [*verdicts, Verdict.REVOKE]
