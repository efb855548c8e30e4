"""What the agent is doing on a call, as the call console shows it: the closed set of
values `CallSession` reports (``on_activity``) and workers pass to the supervisor."""

from __future__ import annotations

import typing
from typing import Final, Literal

Activity = Literal["listening", "thinking", "speaking", "on-hold", "transferring"]
"""listening: nobody else has the floor (the caller may be talking); thinking: a reply is
being prepared; speaking: agent audio is produced or queued; on-hold: the caller put the
agent on hold; transferring: the caller is being handed to a human, or talks with one."""

ACTIVITIES: Final[tuple[Activity, ...]] = typing.get_args(Activity)
"""Every `Activity`, in the order above."""
