from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRevocationsRequest(_message.Message):
    __slots__ = ("deltas",)
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    deltas: bool
    def __init__(self, deltas: _Optional[bool] = ...) -> None: ...

class RevocationsUpdate(_message.Message):
    __slots__ = ("revision", "full", "records_json", "synced", "age_seconds", "lag_after_seconds", "heartbeat_seconds", "delta", "base_revision", "removed_json", "epoch")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_JSON_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAG_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    REMOVED_JSON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    revision: int
    full: bool
    records_json: bytes
    synced: bool
    age_seconds: float
    lag_after_seconds: float
    heartbeat_seconds: float
    delta: bool
    base_revision: int
    removed_json: bytes
    epoch: str
    def __init__(self, revision: _Optional[int] = ..., full: _Optional[bool] = ..., records_json: _Optional[bytes] = ..., synced: _Optional[bool] = ..., age_seconds: _Optional[float] = ..., lag_after_seconds: _Optional[float] = ..., heartbeat_seconds: _Optional[float] = ..., delta: _Optional[bool] = ..., base_revision: _Optional[int] = ..., removed_json: _Optional[bytes] = ..., epoch: _Optional[str] = ...) -> None: ...
