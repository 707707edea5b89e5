"""Reading TensorBoard event files back in tests: tensorboardX writes them but has no reader."""

import struct
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event


def read_events(folder: Path) -> list[Event]:
    """The Event protos of every event file in ``folder``, in file order. TFRecord framing: a uint64 length,
    its masked CRC (uint32), the data, the data's masked CRC (uint32)."""
    events = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = file.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            events.append(Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
    return events


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalars in ``folder``'s event files (a later file's value wins)."""
    scalars: dict[str, dict[int, float]] = {}
    for event in read_events(folder):
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars
