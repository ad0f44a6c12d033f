"""Reads TensorBoard event files back without TensorFlow, to test what a run wrote.

An event file is a sequence of records: little-endian uint64 length, its masked CRC32C,
the serialised `Event` proto, the data's masked CRC32C.
"""

import pathlib
import struct

from tensorboardX.proto import event_pb2


def events(directory) -> list:
  """Every Event proto in the event files of `directory`, in file and write order."""
  found = []
  for path in sorted(pathlib.Path(directory).glob('events.out.tfevents.*')):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      start = offset + 12  # Length and its CRC.
      found.append(event_pb2.Event.FromString(data[start:start + length]))
      offset = start + length + 4  # The data's CRC.
  return found


def scalars(directory) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the scalar summaries."""
  table = {}
  for event in events(directory):
    for value in event.summary.value:
      if value.HasField('simple_value'):
        table.setdefault(value.tag, {})[event.step] = value.simple_value
  return table


def plugin_tags(directory) -> dict[str, set[str]]:
  """{plugin name: tags} of the non-scalar summaries (hparams, text)."""
  table = {}
  for event in events(directory):
    for value in event.summary.value:
      if value.metadata.plugin_data.plugin_name:
        table.setdefault(value.metadata.plugin_data.plugin_name, set()).add(value.tag)
  return table
