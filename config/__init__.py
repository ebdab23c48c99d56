"""Settings of the hub: ``config.load()`` returns a frozen :class:`Settings`."""

from config.settings import Settings, SettingsError, load

__all__ = ["Settings", "SettingsError", "load"]
