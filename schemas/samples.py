"""Per-shard download metadata: one row per input row, successes and failures alike.

Field names follow img2dataset (key, url, caption, status, error_message, width, height,
original_width, original_height, sha256/md5/sha512, exif) so tools written for its output keep working.
"""

from dataclasses import dataclass
from typing import Mapping

import pyarrow as pa

# The closed set of statuses. Everything but "success" carries a non-empty error_message.
SUCCESS = "success"
INVALID_URL = "invalid_url"  # empty, malformed, or a scheme other than http/https: never opened
BLOCKED = "blocked"  # the address (or a redirect hop's) is loopback/private/reserved and not allowed
OPTED_OUT = "opted_out"  # X-Robots-Tag carried a disallowed directive (noai, noimageai, ...)
FAILED_TO_DOWNLOAD = "failed_to_download"  # network error, HTTP error, timeout, body over the byte cap
FAILED_TO_DECODE = "failed_to_decode"  # not a decodable image (HTML, garbage, truncated, pixel bomb)
FILTERED = "filtered"  # decoded but refused by a size or aspect-ratio rule
STATUSES = (SUCCESS, INVALID_URL, BLOCKED, OPTED_OUT, FAILED_TO_DOWNLOAD, FAILED_TO_DECODE, FILTERED)


@dataclass(frozen=True)
class Outcome:
    """What happened to one sample at one step: a status from :data:`STATUSES`, and for a failure
    its class (a short token such as ``timeout`` or ``http_404``) and a message for people."""

    status: str = SUCCESS
    error_class: str | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; one of {STATUSES}")
        if self.status != SUCCESS and not self.error_message:
            raise ValueError(f"a {self.status} outcome needs an error_message")

    @classmethod
    def of_row(cls, row: Mapping) -> "Outcome":
        """The outcome a metadata row records."""
        return cls(row["status"], row.get("error_class"), row.get("error_message"))

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    @property
    def failure_class(self) -> str | None:
        """What a failure counts under in progress and stats: its error class, else its status."""
        return None if self.ok else self.error_class or self.status

    def fields(self) -> dict:
        """The metadata columns this outcome fills."""
        return {"status": self.status, "error_class": self.error_class, "error_message": self.error_message}


OK = Outcome()


class OutcomeFields:
    """``status``, ``error_class`` and ``error_message`` read through a result's ``outcome``."""

    outcome: Outcome

    @property
    def status(self) -> str:
        return self.outcome.status

    @property
    def error_class(self) -> str | None:
        return self.outcome.error_class

    @property
    def error_message(self) -> str | None:
        return self.outcome.error_message

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_message", pa.string()),
        pa.field("error_class", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        # The downloaded body's hash, in the column of the algorithm ``compute_hash`` names (img2dataset's).
        pa.field("sha256", pa.string()),
        pa.field("md5", pa.string()),
        pa.field("sha512", pa.string()),
        # img2dataset's exif column: a JSON object of the EXIF tags as exifread prints them ("{}": none).
        pa.field("exif", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("byte_count", pa.int64()),
        pa.field("image_format", pa.string()),
        # Byte range of this sample's members inside the shard's tar (header of the first member
        # to the end of the last), so a loader can read one sample with one ranged read.
        pa.field("tar_offset", pa.int64()),
        pa.field("tar_size", pa.int64()),
    ],
    metadata={"mmdata.schema": "samples/1"},
)

# The hash algorithms of compute_hash and verify_hash: exactly the hash columns above.
HASH_FIELDS = ("md5", "sha256", "sha512")

# The groups of SAMPLE_SCHEMA's fields, by who sets them. A (re)download sets every OUTCOME_FIELDS
# column and clears those it does not fill, so a retried row keeps nothing of its last attempt.
IDENTITY_FIELDS = ("key", "uid")
INPUT_FIELDS = ("url", "caption")
# Where a sample sits in its tar; recomputed whenever a shard is (re)written.
SPAN_FIELDS = ("tar_offset", "tar_size")
OUTCOME_FIELDS = tuple(
    name for name in SAMPLE_SCHEMA.names if name not in (*IDENTITY_FIELDS, *INPUT_FIELDS, *SPAN_FIELDS)
)
