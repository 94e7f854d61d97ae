"""One error model: every Fig error carries its SQLSTATE; the connection layer encodes it."""

from __future__ import annotations

from typing import ClassVar


class FigError(Exception):
    """Base of every error Fig reports to a client. Subclasses set their SQLSTATE."""

    sqlstate: ClassVar[str] = "XX000"
    severity: ClassVar[str] = "ERROR"

    def __init__(self, message: str, *, detail: str = "", hint: str = "",
                 position: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        self.position = position

    def fields(self) -> dict[str, str]:
        """ErrorResponse fields keyed by their one-letter protocol codes."""
        out = {"S": self.severity, "V": self.severity, "C": self.sqlstate, "M": self.message}
        if self.detail:
            out["D"] = self.detail
        if self.hint:
            out["H"] = self.hint
        if self.position:
            out["P"] = str(self.position)
        return out


class InternalError(FigError):
    sqlstate = "XX000"


class ProtocolViolation(FigError):
    sqlstate = "08P01"


class ConnectionFailure(FigError):
    sqlstate = "08006"


class TooManyConnections(FigError):
    sqlstate = "53300"
    severity = "FATAL"


class InvalidPassword(FigError):
    sqlstate = "28P01"
    severity = "FATAL"


class InvalidAuthorization(FigError):
    sqlstate = "28000"
    severity = "FATAL"


class FeatureNotSupported(FigError):
    sqlstate = "0A000"


class SqlSyntaxError(FigError):
    sqlstate = "42601"


class UndefinedTable(FigError):
    sqlstate = "42P01"


class UndefinedColumn(FigError):
    sqlstate = "42703"


class InsufficientPrivilege(FigError):
    sqlstate = "42501"


class QueryCanceled(FigError):
    sqlstate = "57014"


class AdminShutdown(FigError):
    """Fig is stopping: the session ends as Postgres's own shutdown ends it."""

    sqlstate = "57P01"
    severity = "FATAL"

    def __init__(self, message: str = "terminating connection due to administrator command"
                 ) -> None:
        super().__init__(message)


class OutOfMemory(FigError):
    sqlstate = "53200"


class ProgramLimitExceeded(FigError):
    sqlstate = "54000"


class InvalidParameterValue(FigError):
    sqlstate = "22023"


class DataException(FigError):
    sqlstate = "22000"


class DivisionByZero(FigError):
    sqlstate = "22012"


class NumericValueOutOfRange(FigError):
    sqlstate = "22003"


class ObjectNotInPrerequisiteState(FigError):
    sqlstate = "55000"


class IoError(FigError):
    """Storage (a local folder or an object store) failed a read or write."""

    sqlstate = "58030"


class ConfigurationError(FigError):
    sqlstate = "F0000"
