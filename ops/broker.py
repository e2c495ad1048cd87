"""The embedded broker's transport (settings: the `filesystem://` broker): kombu's filesystem
transport, with each message file whole before a worker can see it.

kombu writes a message in place (open the `.msg` file, lock it, write), while a worker lists the
folder, moves each `.msg` file it finds and reads it without waiting for that lock. A worker that
lists the folder between the writer's open and its write reads an empty message, fails to decode
it and stops (kombu#1551); the demo's worker died so after a few minutes of its live trickle. Here
a message is written under a name no reader takes (`.msg.tmp`) and renamed to its `.msg` name
once written: a rename within one folder is atomic, so a reader finds a whole message or none."""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu's own is untyped
        # The name kombu gives (time first: workers take the oldest), so its reader's order holds.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.tmp"  # "<queue>.msg.tmp" is not "<queue>.msg": no reader takes it
        try:
            with open(partial, "wb", buffering=0) as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
