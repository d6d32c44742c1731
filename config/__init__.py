"""Settings and data files. Import `settings` for the process-wide configuration."""
from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
