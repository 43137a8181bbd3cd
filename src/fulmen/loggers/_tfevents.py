"""A small TensorBoard event-file writer for scalars and hyperparameters.

``torch.utils.tensorboard`` imports TensorBoard's whole summary API (about half a second), which the
default logger would pay in every ``fit``. Scalars and the HPARAMS tab need only TensorBoard's protocol
buffers (a few tens of milliseconds) and the TFRecord framing, written here. ``TensorBoardLogger.experiment``
still returns the full ``SummaryWriter`` for images, histograms and graphs, created on first use; TensorBoard
reads the event files of a folder together.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any, Mapping

_CRC_TABLE: list[int] = []


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord frames carry."""
    if not _CRC_TABLE:
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
            _CRC_TABLE.append(crc)
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFileWriter:
    """Appends ``Event`` records to ``log_dir/events.out.tfevents.<time>.<host>.<pid>.fulmen``.

    Example::

        writer = EventFileWriter("logs/version_0")
        writer.add_scalar("loss", 0.5, step=10)
        writer.close()
    """

    def __init__(self, log_dir: str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        os.makedirs(log_dir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.fulmen"
        self.path = os.path.join(log_dir, name)
        self._file = open(self.path, "ab")
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data)))

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        summary = self._summary_pb2.Summary(value=[self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
        event = self._event_pb2.Event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = int(step)
        self._write(event)

    def add_hparams(self, params: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """The three summaries the HPARAMS tab reads: the experiment, the session's start (its values), its end."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        summary_pb2 = self._summary_pb2
        start = plugin_data_pb2.SessionStartInfo()
        infos = []
        for key, value in params.items():
            if value is None:
                continue
            if isinstance(value, bool):
                start.hparams[key].bool_value = value
                kind = "DATA_TYPE_BOOL"
            elif isinstance(value, (int, float)):
                start.hparams[key].number_value = value
                kind = "DATA_TYPE_FLOAT64"
            else:
                start.hparams[key].string_value = str(value)
                kind = "DATA_TYPE_STRING"
            infos.append(api_pb2.HParamInfo(name=key, type=api_pb2.DataType.Value(kind)))
        experiment = api_pb2.Experiment(
            hparam_infos=infos, metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=k)) for k in metrics]
        )
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS"))
        for tag, field, message in (("_hparams_/experiment", "experiment", experiment),
                                    ("_hparams_/session_start_info", "session_start_info", start),
                                    ("_hparams_/session_end_info", "session_end_info", end)):
            content = plugin_data_pb2.HParamsPluginData(version=0, **{field: message}).SerializeToString()
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="hparams", content=content)
            )
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata)])
            self._write(self._event_pb2.Event(wall_time=time.time(), summary=summary))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
