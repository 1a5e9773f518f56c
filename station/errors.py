"""Errors a user can act on. The CLI prints each as one line and exits with its code."""


class StationError(Exception):
    exit_code = 1


class ConfigError(StationError):
    exit_code = 2


class ModelError(StationError):
    exit_code = 3


class AudioInputError(StationError):
    """A file or device that cannot be read. The run skips it and goes on."""

    exit_code = 4


class DeviceError(AudioInputError):
    pass


class StorageError(StationError):
    """The database cannot be opened or written (disk full, read-only, locked for too long)."""

    exit_code = 5
