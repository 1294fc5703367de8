"""The gateway's admin, one module per model family; importing this package registers them."""

from gateway.admin import api_keys, facades, projects  # noqa: F401 (each registers its admins)
