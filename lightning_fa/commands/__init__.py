"""The `lightning-fa` commands: entry points above the library, which never imports them."""
