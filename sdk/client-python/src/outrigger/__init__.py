"""Outrigger from Python: the sidecar's cache, locks and semaphores, rate
limits, counters, maps, presence and pub/sub, blocking (`Client`) or on
asyncio (`AsyncClient`)."""

from ._wire import (
    Applied,
    Changes,
    Counter,
    Decision,
    Entry,
    Field,
    KeyPage,
    Lease,
    Leased,
    Limit,
    MapFields,
    Member,
    MemberPage,
    Message,
)
from .aio import AsyncClient, AsyncHeldLock, AsyncPresence
from .client import Client, HeldLock, Presence
from .errors import (
    Conflict,
    InvalidArgument,
    LockLost,
    NotFound,
    OutriggerError,
    PermissionDenied,
    PreconditionFailed,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "Applied",
    "AsyncClient",
    "AsyncHeldLock",
    "AsyncPresence",
    "Changes",
    "Client",
    "Conflict",
    "Counter",
    "Decision",
    "Entry",
    "Field",
    "HeldLock",
    "InvalidArgument",
    "KeyPage",
    "Lease",
    "Leased",
    "Limit",
    "LockLost",
    "MapFields",
    "Member",
    "MemberPage",
    "Message",
    "NotFound",
    "OutriggerError",
    "PermissionDenied",
    "PreconditionFailed",
    "Presence",
    "RateLimited",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]
