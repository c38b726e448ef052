"""lightning_fa: stable video face alignment."""
