"""Column types that behave the same on PostgreSQL, MySQL/MariaDB and SQLite."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import sqlalchemy as sa
import sqlalchemy.dialects.mysql
from sqlalchemy.types import TypeDecorator


class Money(TypeDecorator):
    """An exact decimal, NUMERIC(18, 6). SQLite has no exact decimal, so there it is kept as text."""

    impl = sa.Numeric(18, 6)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.Numeric(18, 6, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = Decimal(value)
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        # Normalised, so 44.700000 from NUMERIC(18, 6) and 44.7 from text compare and print alike.
        number = Decimal(value) if not isinstance(value, Decimal) else value
        return number.normalize() if number != 0 else Decimal(0)


class UTCDateTime(TypeDecorator):
    """A point in time, always given back as an aware UTC datetime."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))  # keep the microseconds
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        # Only PostgreSQL keeps a zone; elsewhere store UTC wall time.
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def column_type(kind: str) -> sa.types.TypeEngine:
    """The SQL type for a mapping field's type."""
    return {
        "string": sa.Text(),
        "text": sa.Text(),
        "integer": sa.BigInteger(),
        "decimal": Money(),
        "boolean": sa.Boolean(),
        "datetime": UTCDateTime(),
        "json": sa.JSON(),
    }[kind]


#: Record keys compare exactly (MySQL's default collation would fold case and accents).
KEY = sa.String(255).with_variant(sa.dialects.mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")
#: Raw bodies up to the 1 MiB limit (MySQL's plain BLOB stops at 64 KiB).
BODY = sa.LargeBinary().with_variant(sa.dialects.mysql.LONGBLOB(), "mysql", "mariadb")
FINGERPRINT = sa.String(64)
#: A Partnero program's name (``sync.settings.PROGRAM_NAME``: at most 40 characters).
PROGRAM = sa.String(40)
